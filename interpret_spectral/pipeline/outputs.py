"""What a run writes: result files, figures and the summary.

Examples
--------
>>> safe_name("a b")
'a_b'
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from interpret_spectral.pipeline.job import AnalyzeSettings, GraphResult, progress_bar

__all__ = ["safe_name", "draw_figures", "write_results", "summarize", "draw_overviews"]


def safe_name(sample_id: str) -> str:
    """A file-name-safe form of a sample id.

    Examples
    --------
    >>> safe_name("a/b c")
    'a_b_c'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id) or "sample"


def _store_has_pixels(store: Any) -> bool:
    return "pixels" in store.ds.data_vars


def draw_figures(store: Any, result: GraphResult, folder: str | os.PathLike[str], start: int = 1,
                 progress: bool = True) -> list[Path]:
    """Draw one graph kind's figures into ``folder``; returns the files written.

    The per-site contributions, then per image (when the store holds its pixels) its
    eigenvectors as RGB from component ``start`` and its segments over the image.

    Examples
    --------
    >>> paths = draw_figures(store, results["qk"], "figures")  # doctest: +SKIP
    """
    folder = Path(folder)
    from interpret_spectral import viz

    name, label = result.name, result.name.upper()
    written = [folder / f"contributions_{name}.png"]
    viz.plot_site_contributions(
        result.contributions, title=f"{label} graphs: Rayleigh quotient per site and head", path=written[-1]
    )
    if not _store_has_pixels(store):
        return written
    decomposition = result.decomposition
    ids = [str(s) for s in decomposition["sample"].values]
    n_components = decomposition.sizes["component"]
    meaning = f" ('{result.meaning}')" if result.meaning else ""
    for i in progress_bar(range(len(ids)), progress, f"figures {name}", total=len(ids)):
        image = viz.store_image(store, ids[i])
        stem = safe_name(ids[i])
        written.append(folder / f"{stem}_eigenvectors_{name}.png")
        viz.plot_eigenvectors(
            decomposition, sample=i, image=image, start=min(start, max(n_components - 3, 0)),
            title=f"{ids[i]}: {label} eigenvectors{meaning}", path=written[-1],
        )
        written.append(folder / f"{stem}_segments_{name}.png")
        viz.plot_segments(result.labels, image, sample=i, title=f"{ids[i]}: {label} segments", path=written[-1])
    return written


def write_results(folder: str | os.PathLike[str], results: dict[str, GraphResult]) -> list[Path]:
    """Write ``vectors_<graph>.nc`` and ``labels_<graph>.nc`` of every graph kind into ``folder``.

    Examples
    --------
    >>> write_results("unused", {})
    []
    """
    from interpret_spectral.store.results import save_netcdf

    folder = Path(folder)
    written = []
    for name, result in results.items():
        written.append(save_netcdf(result.decomposition, folder / f"vectors_{name}.nc"))
        written.append(save_netcdf(result.labels, folder / f"labels_{name}.nc"))
    return written


def top_sites(contributions: Any, count: int = 3) -> list[dict[str, Any]]:
    """The sites whose graphs agree most with the solution (mean Rayleigh quotient).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> c = xr.DataArray(np.array([[0.1, 0.2], [0.9, 0.8]]), dims=("site", "component"),
    ...                  coords={"site": ["a", "b"]})
    >>> top_sites(c, count=1)
    [{'site': 'b', 'rayleigh_quotient': 0.85}]
    """
    per_site = contributions.mean(dim=[d for d in contributions.dims if d != "site"], skipna=True)
    order = np.argsort(-per_site.values)[:count]
    names = [str(s) for s in per_site["site"].values]
    return [{"site": names[i], "rayleigh_quotient": round(float(per_site.values[i]), 4)} for i in order]


def _per_sample(labels: Any, name: str, ids: Sequence[str]) -> dict[str, float | None]:
    values = np.asarray(labels[name].values, dtype=np.float64)
    return {sid: (None if not np.isfinite(v) else round(float(v), 4)) for sid, v in zip(ids, values)}


def summarize(store: Any, settings: AnalyzeSettings, results: dict[str, GraphResult],
              model_name: str | None = None, layers: Any = None) -> dict[str, Any]:
    """The summary of a run: model, sites, settings, and per graph the eigenvalues, K and scores per image.

    Examples
    --------
    >>> from interpret_spectral.pipeline import analyze_samples
    >>> from interpret_spectral.synthetic import planted_store
    >>> store = planted_store(n_samples=1)
    >>> settings = AnalyzeSettings(graphs=("vv",), n_components=3, k=2)
    >>> summary = summarize(store, settings, analyze_samples(store, settings, progress=False))
    >>> summary["graphs"]["vv"]["k"]
    {'planted-0': 2}
    """
    from interpret_spectral.store.reader import sample_ids, site_names

    ids = sample_ids(store)
    sites = site_names(store)
    first = store[sites[0]]
    summary: dict[str, Any] = {
        "model": model_name or str(store.attrs.get("model", "")),
        "adapter": str(store.attrs.get("adapter", "")),
        "input_shape": [int(v) for v in np.atleast_1d(store.attrs.get("input_shape", []))],
        "samples": ids,
        "sites": len(sites),
        "heads_per_site": int(first.attrs["num_heads"]),
        "grids": sorted({f"{int(store[s].attrs['grid_h'])}x{int(store[s].attrs['grid_w'])}" for s in sites}),
        "store": "store.h5",
        "settings": {
            "graphs": settings.graph_names, "n_components": int(settings.n_components),
            "solver": str(getattr(settings.solver, "name", settings.solver)), "heads": settings.heads,
            "seed": int(settings.seed), "crf": bool(settings.crf),
            "layers": "all" if layers is None else [str(x) for x in layers],
        },
        "graphs": {},
        "figures": [],
    }
    for name, result in results.items():
        decomposition, labels = result.decomposition, result.labels
        result_ids = [str(s) for s in decomposition["sample"].values]
        summary["settings"].setdefault("k", int(settings.k) if settings.k is not None else str(labels.attrs.get("k_selection")))
        summary["settings"].setdefault("k_range", [int(k) for k in np.atleast_1d(labels.attrs.get("k_range", []))])
        values = decomposition["values"]
        entry: dict[str, Any] = {
            "meaning": result.meaning,
            "vectors": f"vectors_{name}.nc",
            "labels": f"labels_{name}.nc",
            "grid": [int(decomposition.sizes["y"]), int(decomposition.sizes["x"])],
            "values": {
                sid: [round(float(v), 6) for v in (values.isel(sample=i) if "sample" in values.dims else values).values]
                for i, sid in enumerate(result_ids)
            },
            "k": {sid: int(k) for sid, k in zip(result_ids, labels["k"].values)},
        }
        for score in ("k_score", "silhouette"):
            if score in labels.coords:
                entry[score] = _per_sample(labels, score, result_ids)
        entry["sites_most_in_agreement"] = top_sites(result.contributions)
        summary["graphs"][name] = entry
    return summary


def draw_overviews(store: Any, results: dict[str, GraphResult], folder: Path, start: int, progress: bool) -> list[Path]:
    """One overview figure per image: every graph kind's segments and first components."""
    if not _store_has_pixels(store) or not results:
        return []
    from interpret_spectral import viz

    first = next(iter(results.values()))
    ids = [str(s) for s in first.decomposition["sample"].values]
    n_components = first.decomposition.sizes["component"]
    titles = {
        name: f"{name.upper()} ('{r.meaning}')" if r.meaning else name.upper() for name, r in results.items()
    }
    written = []
    for i in progress_bar(range(len(ids)), progress, "overview", total=len(ids)):
        path = folder / "figures" / f"{safe_name(ids[i])}_overview.png"
        viz.plot_overview(
            viz.store_image(store, ids[i]),
            {titles[name]: r.decomposition for name, r in results.items()},
            {titles[name]: r.labels for name, r in results.items()},
            sample=i, start=min(start, max(n_components - 6, 0)), n_groups=2, path=path,
        )
        written.append(path)
    return written

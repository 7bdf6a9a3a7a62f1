"""What the viewer page shows, gathered into one JSON-ready dict: :func:`viewer_data`.

Per sample and per decomposition (graph kind) the payload holds

- the image (the store's ``pixels``, or one passed in) as a PNG data URI;
- the eigenvectors as RGB pictures, one per slider position ``i`` (components ``i``,
  ``i + 1``, ``i + 2`` as red, green, blue; :func:`interpret_spectral.viz.eigenvector_rgb`),
  on the decomposition's grid (the browser upsamples them smoothly), and the eigenvalues;
- the segments over the image (:func:`interpret_spectral.viz.overlay_segments`), K and its score;
- the per-site, per-head contributions (Rayleigh quotients,
  :func:`interpret_spectral.site_contributions`) for every component;
- for every site and head, the ``top_k`` strongest entries of every patch's row of the
  random-walk matrix ``P`` the decomposition used (the rows are those of the graph kind
  of the decomposition, built by :func:`interpret_spectral.spectral.decompose.sample_operator`),
  as base64 typed arrays: column indices (uint16), values as a fraction of the row's
  largest entry (uint8) and the row's largest entry (float32).  Hovering a patch in the
  page draws that row as a heat map over the site's grid.

Arrays travel as base64 so the page stays one self-contained file.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from interpret_spectral._version import __version__
from interpret_spectral.store.decomposition import as_vectors, validate_decomposition
from interpret_spectral.store.reader import sample_ids, site_names

__all__ = ["viewer_data", "png_data_uri", "b64_array", "DEFAULT_TOP_K", "MAX_AFFINITY_BYTES"]

#: Strongest entries kept per patch row of every site's and head's affinity matrix.
DEFAULT_TOP_K = 16
#: Sites whose dense ``(heads, n, n)`` float32 affinity would exceed this are left out of the hover.
MAX_AFFINITY_BYTES = 512 * 2**20
#: Longest side of the embedded image (larger images are shrunk to keep the page small).
DEFAULT_MAX_SIDE = 448


def png_data_uri(picture: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI of an ``(H, W, 3)`` picture (uint8, or float in [0, 1]).

    Examples
    --------
    >>> import numpy as np
    >>> png_data_uri(np.zeros((2, 2, 3), np.uint8))[:22]
    'data:image/png;base64,'
    """
    from PIL import Image

    array = np.asarray(picture)
    if array.dtype != np.uint8:
        array = np.clip(np.round(np.asarray(array, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"a picture must be (H, W, 3), got shape {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def b64_array(array: np.ndarray, dtype: str) -> str:
    """The little-endian bytes of ``array`` cast to ``dtype``, base64-encoded (for JS typed arrays).

    Examples
    --------
    >>> import base64, numpy as np
    >>> np.frombuffer(base64.b64decode(b64_array(np.array([1, 2]), "uint16")), "<u2").tolist()
    [1, 2]
    """
    data = np.ascontiguousarray(np.asarray(array).astype(np.dtype(dtype).newbyteorder("<")))
    return base64.b64encode(data.tobytes()).decode("ascii")


def _shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    factor = max_side / max(h, w)
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _as_mapping(value: Any, key_of: Any) -> dict[str, Any]:
    """``{graph: object}`` from one object or a mapping of them."""
    if value is None:
        return {}
    if isinstance(value, Mapping) and not isinstance(value, xr.Dataset):
        return {str(k): v for k, v in value.items()}
    return {key_of(value): value}


def _graph_of(decomposition: xr.Dataset) -> str:
    validate_decomposition(decomposition)
    return str(decomposition.attrs.get("graph", "graph"))


def _labels_graph(labels: xr.DataArray) -> str:
    """The graph kind of the decomposition ``segment()`` labelled (recorded in its ``source`` attribute)."""
    source = labels.attrs.get("source")
    if isinstance(source, str):
        try:
            graph = json.loads(source).get("graph")
        except (ValueError, AttributeError):
            graph = None
        if graph:
            return str(graph)
    return str(labels.attrs.get("graph", ""))


def _image_for(store: xr.DataTree, sid: str, images: Mapping[str, Any]) -> np.ndarray | None:
    from interpret_spectral.viz import store_image

    if sid in images:
        image = images[sid]
        array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"the image of sample {sid!r} must be (H, W, 3) RGB, got shape {array.shape}")
        if array.dtype != np.uint8:
            scale = 255.0 if array.size and float(np.nanmax(array)) <= 1.0 else 1.0
            array = np.clip(np.round(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)
        return array
    if "pixels" in store.ds.data_vars:
        return store_image(store, sid)
    return None


def _rgb_pictures(vectors: np.ndarray) -> list[str]:
    """One grid-sized PNG per slider position: components ``i, i+1, i+2`` as RGB."""
    from interpret_spectral.viz import eigenvector_rgb

    n = vectors.shape[-1]
    if n < 3:
        padded = np.concatenate([vectors, np.zeros(vectors.shape[:2] + (3 - n,))], axis=-1)
        return [png_data_uri(eigenvector_rgb(padded, (0, 1, 2)))]
    return [png_data_uri(eigenvector_rgb(vectors, (i, i + 1, i + 2))) for i in range(n - 2)]


def _finite_or_none(values: np.ndarray, digits: int = 5) -> Any:
    """Nested lists with NaN as None (JSON has no NaN)."""
    array = np.asarray(values, dtype=np.float64)
    rounded = np.round(array, digits).tolist()

    def clean(item: Any) -> Any:
        if isinstance(item, list):
            return [clean(x) for x in item]
        return None if not np.isfinite(item) else item

    return clean(rounded)


def _timestep_setting(decomposition: xr.Dataset) -> Any:
    raw = decomposition.attrs.get("timesteps")
    if raw is None or (isinstance(raw, str) and raw in ("None", "null")):
        return None
    values = json.loads(raw) if isinstance(raw, str) else list(np.atleast_1d(raw).tolist())
    return None if values is None else values[:1]


def _affinity(
    store: xr.DataTree, position: int, decomposition: xr.Dataset, sites: Sequence[str], top_k: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """Top-k rows of every chosen site's and head's ``P`` for one sample; also the sites left out."""
    import torch

    from interpret_spectral.spectral.decompose import sample_operator

    attrs = decomposition.attrs
    grid = tuple(int(v) for v in np.asarray(attrs.get("grid", (decomposition.sizes["y"], decomposition.sizes["x"]))).ravel())
    fitting, skipped = [], []
    for name in sites:
        node = store[name]
        n = int(node.attrs["grid_h"]) * int(node.attrs["grid_w"])
        if int(node.attrs["num_heads"]) * n * n * 4 > MAX_AFFINITY_BYTES or n > 65535:
            skipped.append(name)
        else:
            fitting.append(name)
    out: list[dict[str, Any]] = []
    for name in fitting:
        operator = sample_operator(
            store, position, graph=str(attrs["graph"]), layers=[name], heads="each",
            timesteps=_timestep_setting(decomposition), resample=str(attrs.get("resample", "bilinear")), grid=grid,
        )
        for graphs in operator.graphs:
            with torch.no_grad():
                p = graphs.dense().float()
            k = min(int(top_k), p.shape[-1])
            values, index = torch.topk(p, k, dim=-1)
            row_max = values[..., :1].clamp_min(torch.finfo(torch.float32).tiny)
            quantised = torch.round(255.0 * values / row_max).clamp_(0, 255)
            out.append({
                "site": name,
                "grid": [int(graphs.grid[0]), int(graphs.grid[1])],
                "heads": int(graphs.num_graphs),
                "k": k,
                "index": b64_array(index.cpu().numpy(), "uint16"),
                "value": b64_array(quantised.cpu().numpy(), "uint8"),
                "row_max": b64_array(row_max[..., 0].cpu().numpy(), "float32"),
            })
    return out, skipped


def viewer_data(
    store: xr.DataTree,
    decompositions: xr.Dataset | Mapping[str, xr.Dataset],
    labels: xr.DataArray | Mapping[str, xr.DataArray] | None = None,
    *,
    images: Mapping[str, Any] | None = None,
    samples: Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
    top_k: int = DEFAULT_TOP_K,
    max_side: int = DEFAULT_MAX_SIDE,
    title: str | None = None,
    meanings: Mapping[str, str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Everything the viewer page shows, as a JSON-ready dict.

    Parameters
    ----------
    store : xarray.DataTree
        The store the decompositions came from (its ``pixels`` are the images).
    decompositions : xarray.Dataset or mapping of str to Dataset
        What ``decompose()`` returns, one per graph kind (keys name them; a single
        Dataset is keyed by its ``graph`` attribute).
    labels : xarray.DataArray or mapping of str to DataArray, optional
        What ``segment()`` returns, keyed like ``decompositions``.
    images : mapping of str to image, optional
        Images by sample id, for stores without ``pixels``.
    samples : sequence of str, optional
        Sample ids to show (default: every sample of the first decomposition).
    sites : sequence of str, optional
        Sites whose affinities the hover shows (default: every site of the store).
    top_k : int
        Strongest entries kept per patch row.
    max_side : int
        Longest side of the embedded images, in pixels.
    title : str, optional
        The page title.
    meanings : mapping of str to str, optional
        A word per graph kind shown beside its name (default: the registered kind's
        ``pathway``, e.g. ``"where"`` for ``"qk"``).
    progress : bool
        Show a progress bar over samples.

    Returns
    -------
    dict

    Examples
    --------
    >>> from interpret_spectral import decompose, segment
    >>> from interpret_spectral.synthetic import planted_store
    >>> store = planted_store(n_samples=1, grids=((4, 4),), num_heads=1)
    >>> result = decompose(store, n_components=4, progress=False)
    >>> data = viewer_data(store, result, segment(result, k=3))
    >>> data["graphs"], len(data["samples"][0]["graphs"]["qk"]["rgb"])
    (['qk'], 2)
    """
    from tqdm.auto import tqdm

    from interpret_spectral import viz
    from interpret_spectral.spectral.decompose import site_contributions

    decomposition_map = _as_mapping(decompositions, _graph_of)
    if not decomposition_map:
        raise ValueError("viewer_data needs at least one decomposition (what decompose() returns)")
    for graph, decomposition in decomposition_map.items():
        validate_decomposition(decomposition, source=f"decomposition {graph!r}")
    label_map = _as_mapping(labels, _labels_graph)
    if "" in label_map:
        if len(decomposition_map) != 1:
            raise ValueError("the labels do not say which graph they segment; pass labels={graph: labels}")
        label_map = {next(iter(decomposition_map)): label_map[""]}
    unknown = sorted(set(label_map) - set(decomposition_map))
    if unknown:
        raise KeyError(f"labels for {unknown} have no decomposition; decompositions: {sorted(decomposition_map)}")
    if int(top_k) < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k}")
    images = dict(images or {})
    store_ids = sample_ids(store)
    first = next(iter(decomposition_map.values()))
    ids = [str(s) for s in first["sample"].values] if samples is None else [str(s) for s in samples]
    if not ids:
        raise ValueError("no samples to show")
    for graph, decomposition in decomposition_map.items():
        have = {str(s) for s in decomposition["sample"].values}
        missing = [sid for sid in ids if sid not in have or sid not in store_ids]
        if missing:
            raise KeyError(
                f"samples {missing[:3]} are not in both the store and decomposition {graph!r}; "
                f"the decomposition holds {sorted(have)[:5]}"
            )
    all_sites = site_names(store)
    chosen_sites = all_sites if sites is None else [str(s) for s in sites]
    bad_sites = [s for s in chosen_sites if s not in all_sites]
    if bad_sites:
        raise KeyError(f"sites {bad_sites} are not in the store; its sites are: {', '.join(all_sites)}")

    contributions = {
        graph: site_contributions(store, decomposition.sel(sample=ids))
        for graph, decomposition in decomposition_map.items()
    }
    payload: dict[str, Any] = {
        "title": title or f"interpret-spectral viewer: {store.attrs.get('model', 'model')}",
        "version": __version__,
        "model": str(store.attrs.get("model", "")),
        "graphs": list(decomposition_map),
        "meanings": {g: str((meanings or {}).get(g) or _pathway(g)) for g in decomposition_map},
        "colormap": b64_array(_colormap(), "uint8"),
        "samples": [],
    }
    for sid in tqdm(ids, desc="viewer", unit="sample", disable=not progress):
        position = store_ids.index(sid)
        image = _image_for(store, sid, images)
        entry: dict[str, Any] = {"id": sid, "image": None, "size": None, "graphs": {}}
        if image is not None:
            image = _shrink(image, int(max_side))
            entry["image"] = png_data_uri(image)
            entry["size"] = [int(image.shape[0]), int(image.shape[1])]
        for graph, decomposition in decomposition_map.items():
            row = [str(s) for s in decomposition["sample"].values].index(sid)
            vectors = as_vectors(decomposition).isel(sample=row).transpose("y", "x", "component").values
            values = decomposition["values"]
            eigenvalues = values.isel(sample=row).values if "sample" in values.dims else values.values
            table = contributions[graph]["contribution"]
            table = table.isel(sample=ids.index(sid))
            if "timestep" in table.dims:
                table = table.mean("timestep", skipna=True)
            part: dict[str, Any] = {
                "grid": [int(vectors.shape[0]), int(vectors.shape[1])],
                "values": _finite_or_none(eigenvalues, 6),
                "rgb": _rgb_pictures(np.asarray(vectors, dtype=np.float64)),
                "contribution_sites": [str(s) for s in table["site"].values],
                "used": [bool(u) for u in contributions[graph]["used"].values],
                "contributions": _finite_or_none(table.transpose("site", "head", "component").values, 5),
                "segments": None,
                "k": None,
                "silhouette": None,
            }
            if graph in label_map:
                label_array = label_map[graph]
                if "sample" in label_array.dims:
                    if sid not in [str(s) for s in label_array["sample"].values]:
                        raise KeyError(f"labels {graph!r} hold no sample {sid!r}; pass what segment() returned for it")
                    label_array = label_array.sel(sample=sid)
                base = image if image is not None else np.full((vectors.shape[0] * 8, vectors.shape[1] * 8, 3), 128, np.uint8)
                part["segments"] = png_data_uri(viz.overlay_segments(base, label_array))
                if "k" in label_array.coords:
                    part["k"] = int(label_array["k"].values)
                if "silhouette" in label_array.coords:
                    part["silhouette"] = _finite_or_none(label_array["silhouette"].values, 4)
            part["affinity"], part["affinity_skipped"] = _affinity(store, position, decomposition, chosen_sites, top_k)
            part["affinity_timestep"] = _timestep_setting(decomposition)
            entry["graphs"][graph] = part
        payload["samples"].append(entry)
    return payload


def _pathway(graph: str) -> str:
    """The pathway ("where", "what", ...) a registered graph kind stands for; empty when unknown."""
    from interpret_spectral.spectral.kinds import get_graph_kind

    try:
        return str(get_graph_kind(graph).pathway)
    except (KeyError, ValueError, TypeError):
        return ""


def _colormap() -> np.ndarray:
    """The 256 RGB entries of matplotlib's ``inferno`` (the heat map of the hover), uint8."""
    from matplotlib import colormaps

    return np.round(colormaps["inferno"](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).astype(np.uint8)

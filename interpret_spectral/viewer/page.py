"""Write the viewer page: :func:`write_viewer` (from a run folder or from objects) and :func:`load_run`.

The page is one HTML file with its CSS, its JavaScript and its data inline (images
as PNG data URIs, affinity rows as base64 typed arrays): it opens offline from
disk, needs no server and loads nothing from the network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import xarray as xr

from interpret_spectral.viewer.data import DEFAULT_MAX_SIDE, DEFAULT_TOP_K, viewer_data

__all__ = ["Run", "load_run", "render_page", "write_viewer", "PAGE_NAME"]

#: File name of the page inside a run folder when no path is given.
PAGE_NAME = "viewer.html"
_PLACEHOLDER = "__VIEWER_DATA__"


@dataclass
class Run:
    """What ``interpret-spectral analyze`` wrote into one folder, opened.

    Attributes
    ----------
    store : xarray.DataTree
        ``store.h5``.
    decompositions : dict of str to xarray.Dataset
        ``vectors_<graph>.nc`` by graph kind.
    labels : dict of str to xarray.DataArray
        ``labels_<graph>.nc`` by graph kind (those present).
    summary : dict
        ``summary.json`` (empty when absent).
    """

    store: xr.DataTree
    decompositions: dict[str, xr.Dataset]
    labels: dict[str, xr.DataArray] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def load_run(folder: str | os.PathLike[str]) -> Run:
    """Open the files ``interpret-spectral analyze`` writes into ``folder``.

    Parameters
    ----------
    folder : path-like
        A run folder holding ``store.h5`` and ``vectors_<graph>.nc`` (and usually
        ``labels_<graph>.nc`` and ``summary.json``).

    Returns
    -------
    Run

    Examples
    --------
    >>> run = load_run("out/demo")  # doctest: +SKIP
    >>> sorted(run.decompositions)  # doctest: +SKIP
    ['qk', 'vv']
    """
    from interpret_spectral.store.reader import open_store
    from interpret_spectral.store.results import open_decomposition, open_labels

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass the --out folder of interpret-spectral analyze")
    store_path = folder / "store.h5"
    vector_files = sorted(folder.glob("vectors_*.nc"))
    if not store_path.is_file() or not vector_files:
        raise FileNotFoundError(
            f"{folder} holds no analyze run (it needs store.h5 and vectors_<graph>.nc); "
            f"run `interpret-spectral analyze IMAGES --out {folder}` first"
        )
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    decompositions: dict[str, xr.Dataset] = {}
    labels: dict[str, xr.DataArray] = {}
    for path in vector_files:
        graph = path.stem[len("vectors_"):]
        decompositions[graph] = open_decomposition(path)
        label_path = folder / f"labels_{graph}.nc"
        if label_path.is_file():
            labels[graph] = open_labels(label_path)
    return Run(open_store(store_path), decompositions, labels, summary)


def render_page(data: Mapping[str, Any]) -> str:
    """The HTML of the page for a payload of :func:`interpret_spectral.viewer.viewer_data`.

    Examples
    --------
    >>> html = render_page({"title": "t", "graphs": [], "samples": []})
    >>> html.startswith("<!doctype html>") and "__VIEWER_DATA__" not in html
    True
    """
    template = resources.files("interpret_spectral.viewer").joinpath("template.html").read_text(encoding="utf-8")
    # Inside <script>, "</" could close the element: JSON allows the escaped form "<\/".
    text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/").replace("<!--", "<\\u0021--")
    return template.replace(_PLACEHOLDER, text)


def write_viewer(
    source: str | os.PathLike[str] | xr.DataTree,
    path: str | os.PathLike[str] | None = None,
    *,
    decompositions: xr.Dataset | Mapping[str, xr.Dataset] | None = None,
    labels: xr.DataArray | Mapping[str, xr.DataArray] | None = None,
    images: Mapping[str, Any] | None = None,
    samples: Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
    top_k: int = DEFAULT_TOP_K,
    max_side: int = DEFAULT_MAX_SIDE,
    title: str | None = None,
    progress: bool = False,
) -> Path:
    """Write one self-contained HTML page to look at decompositions image by image.

    Per image the page shows the image, the eigenvectors as RGB with a slider over
    the components (``i, i+1, i+2`` as red, green, blue) and their eigenvalues, the
    segments, the per-site and per-head contributions (bar charts; click a bar to
    pick a site), and, when a patch is hovered, its strongest affinities in the
    chosen site and head (or the mean of the heads) as a heat map.

    Parameters
    ----------
    source : path-like or xarray.DataTree
        The ``--out`` folder of ``interpret-spectral analyze`` (``store.h5``,
        ``vectors_<graph>.nc``, ``labels_<graph>.nc``, ``summary.json``), or a store
        (then pass ``decompositions`` and optionally ``labels``).
    path : path-like, optional
        The page to write; default ``<source>/viewer.html`` for a folder (required
        for a store).
    decompositions : xarray.Dataset or mapping of str to Dataset, optional
        With a store: what ``decompose()`` returned, one per graph kind.
    labels : xarray.DataArray or mapping of str to DataArray, optional
        With a store: what ``segment()`` returned, keyed like ``decompositions``.
    images : mapping of str to image, optional
        Images by sample id, for stores without pixels.
    samples : sequence of str, optional
        Sample ids to show (default all); each adds its images and affinities to the file.
    sites : sequence of str, optional
        Sites the hover can show (default all); fewer sites make a smaller file.
    top_k : int
        Strongest affinities kept per patch, site and head.
    max_side : int
        Longest side of the embedded images in pixels.
    title : str, optional
        Page title.
    progress : bool
        Show a progress bar over samples.

    Returns
    -------
    pathlib.Path
        The page written.

    Examples
    --------
    >>> import tempfile, os
    >>> from interpret_spectral import decompose, segment
    >>> from interpret_spectral.synthetic import planted_store
    >>> store = planted_store(n_samples=1, grids=((4, 4),), num_heads=1)
    >>> result = decompose(store, n_components=4, progress=False)
    >>> page = write_viewer(store, os.path.join(tempfile.mkdtemp(), "view.html"),
    ...                     decompositions=result, labels=segment(result, k=3))
    >>> page.read_text().count("<script") >= 2
    True
    >>> write_viewer("out/demo")  # doctest: +SKIP
    PosixPath('out/demo/viewer.html')
    """
    meanings: dict[str, str] = {}
    if isinstance(source, xr.DataTree):
        if decompositions is None:
            raise ValueError("with a store, pass decompositions= (what decompose() returned) to write_viewer")
        if path is None:
            raise ValueError("with a store, pass the path of the page to write")
        store, close = source, False
    elif isinstance(source, (str, os.PathLike)):
        if decompositions is not None or labels is not None:
            raise ValueError("a run folder brings its own decompositions and labels; pass either a folder or a store")
        run = load_run(source)
        store, close = run.store, True
        decompositions, labels = run.decompositions, run.labels
        meanings = {g: str(entry.get("meaning", "")) for g, entry in run.summary.get("graphs", {}).items()}
        path = Path(source) / PAGE_NAME if path is None else path
        title = title or (f"{run.summary['model']}: {Path(source).name}" if run.summary.get("model") else None)
    else:
        raise TypeError(f"source must be a run folder or an xarray.DataTree store, got {type(source).__name__}")
    try:
        data = viewer_data(
            store, decompositions, labels, images=images, samples=samples, sites=sites, top_k=top_k,
            max_side=max_side, title=title, meanings=meanings, progress=progress,
        )
    finally:
        if close:
            store.close()
    from interpret_spectral.store.atomic import replacing_file

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing_file(path) as partial:
        partial.write_text(render_page(data), encoding="utf-8")
    return path

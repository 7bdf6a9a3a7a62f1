"""The per-image job: settings, decompose + segment + site contributions per graph kind, shards.

Every sample is independent: a runner calls :func:`analyze_samples` per shard and joins
the shards with :func:`concat_results`.

Examples
--------
>>> AnalyzeSettings(graphs=("qk",), n_components=4, k=3).graph_names
['qk']
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AnalyzeSettings", "GraphResult", "analyze_samples", "concat_results", "segment_each",
           "image_files", "dataset_kmeans"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalyzeSettings:
    """What :func:`analyze_samples` computes, checked once (graph kinds and solver by registry).

    Parameters
    ----------
    graphs : sequence of str or graph kind objects
        Graph kinds (names registered in :mod:`interpret_spectral.spectral`, e.g.
        ``"qk"`` 'where' and ``"vv"`` 'what', or kind objects).
    n_components : int
        Eigenvectors per sample.
    solver : str or solver object
        The eigen-solver (a registered name such as ``"exact"`` or ``"adam"``).
    heads : {"each", "concat"}
        One graph per head, or heads concatenated.
    seed : int
        Seed of the solver and of K-Means.
    k : int, optional
        Segments per image; chosen per image (``k_method`` over ``k_range``) when None.
    k_range : sequence of int, optional
        Candidate K (``segment()``'s default when None).
    k_method : str, optional
        How K is chosen (``segment()``'s default when None).
    crf : bool
        Refine the segments with a dense CRF on the image (needs pixels in the store).
    device : str, optional
        Where the decomposition runs (``"cuda"``, ...); the CPU when None.

    Examples
    --------
    >>> AnalyzeSettings(graphs=("qk", "vv", "qk")).graph_names
    ['qk', 'vv']
    """

    graphs: Sequence[Any] = ("qk", "vv")
    n_components: int = 10
    solver: Any = "exact"
    heads: str = "each"
    seed: int = 0
    k: int | None = None
    k_range: Sequence[int] | None = None
    k_method: str | None = None
    crf: bool = False
    device: str | None = None
    kinds: list[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from interpret_spectral.spectral.kinds import get_graph_kind

        kinds: dict[str, Any] = {}
        for graph in self.graphs if not isinstance(self.graphs, str) else [self.graphs]:
            kind = get_graph_kind(graph)
            kinds.setdefault(kind.name, kind)
        if not kinds:
            raise ValueError("give at least one graph kind, e.g. graphs=('qk', 'vv')")
        object.__setattr__(self, "kinds", list(kinds.values()))
        if isinstance(self.solver, str):
            from interpret_spectral.spectral.solvers import available_solvers

            if self.solver not in available_solvers():
                raise ValueError(f"solver must be one of {tuple(available_solvers())}, got {self.solver!r}")
        if int(self.n_components) < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components}")
        if self.k is not None and int(self.k) < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    @property
    def graph_names(self) -> list[str]:
        """The names of the graph kinds, in order."""
        return [kind.name for kind in self.kinds]

    def segment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``segment()`` (only those set, so its defaults apply)."""
        options: dict[str, Any] = {"k": self.k, "seed": self.seed}
        if self.k_range is not None:
            options["k_range"] = list(self.k_range)
        if self.k_method is not None:
            options["k_method"] = self.k_method
        return options


@dataclass
class GraphResult:
    """The per-image job's results for one graph kind (on the samples it was run on)."""

    kind: Any
    decomposition: Any
    labels: Any
    contributions: Any

    @property
    def name(self) -> str:
        return str(self.kind.name)

    @property
    def meaning(self) -> str:
        return str(getattr(self.kind, "pathway", ""))


@dataclass
class StepTimer:
    """Seconds spent per named step of a job, summed over calls (for ``summary.json``).

    Examples
    --------
    >>> import time
    >>> timer = StepTimer()
    >>> timer.add("probe", time.perf_counter())
    >>> list(timer.seconds)
    ['probe']
    """

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, started: float) -> None:
        """Add the time since ``started`` (a ``time.perf_counter()`` value) to step ``name``."""
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 3)


def progress_bar(iterable: Any, progress: bool, desc: str, total: int | None = None) -> Any:
    """A labelled tqdm bar over ``iterable`` (hidden when ``progress`` is false).

    Examples
    --------
    >>> list(progress_bar(range(3), progress=False, desc="steps"))
    [0, 1, 2]
    """
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not progress, leave=False)


# -- inputs -------------------------------------------------------------------------------------
def image_files(paths: Sequence[str | os.PathLike[str]], limit: int | None = None) -> list[Path]:
    """Every image named, or inside the folders named (a folder named ``x.png`` too), in order.

    Parameters
    ----------
    paths : sequence of path-like
        Image files and/or folders of images.
    limit : int, optional
        Keep the first ``limit`` images.

    Returns
    -------
    list of pathlib.Path

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    ValueError
        A folder holds no images, or two images share a file stem (their sample id).

    Examples
    --------
    >>> image_files(["/no/such/photo.jpg"])  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    FileNotFoundError: image /no/such/photo.jpg does not exist
    """
    from interpret_spectral.capture.inputs import list_inputs

    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    items, _ = list_inputs([Path(p).expanduser() for p in paths])
    files = [Path(item.source) for item in items]
    return files[:limit] if limit else files


# -- the per-image job --------------------------------------------------------------------------
def segment_each(decomposition: Any, store: Any = None, *, crf: bool = False, progress: bool = True,
                 desc: str = "segment", **options: Any) -> Any:
    """``segment()`` sample by sample, with a labelled progress bar (and each sample's image for the CRF).

    Parameters
    ----------
    decomposition : xarray.Dataset
        A decomposition in the one format.
    store : xarray.DataTree, optional
        The store the decomposition came from; needed with ``crf`` (its images).
    crf : bool
        Refine with a dense CRF on each image (``segment(refine="crf")``).
    progress : bool
        Show the bar.
    desc : str
        The bar's label.
    **options
        ``segment()``'s options (``k``, ``k_range``, ``k_method``, ``seed``, ``components`` ...).

    Returns
    -------
    xarray.DataArray
        ``labels (sample, y, x)`` as ``segment()`` returns them.

    Examples
    --------
    >>> import xarray as xr
    >>> from interpret_spectral.store.decomposition import make_decomposition
    >>> rows = np.repeat(np.eye(2), 8, axis=0).reshape(1, 4, 4, 2)
    >>> labels = segment_each(make_decomposition(rows, np.ones((1, 2)), ["a"], producer="example"), k=2,
    ...                       progress=False)
    >>> labels.dims, int(labels["k"][0])
    (('sample', 'y', 'x'), 2)
    """
    import xarray as xr

    from interpret_spectral.segmentation import segment

    if crf and store is None:
        raise ValueError("crf=True refines on the images: pass the store they are in")
    n = decomposition.sizes["sample"]
    parts = []
    for i in progress_bar(range(n), progress, desc, total=n):
        one = decomposition.isel(sample=[i])
        if crf:
            from interpret_spectral import viz

            image = viz.store_image(store, str(one["sample"].values[0]))
            parts.append(segment(one, refine="crf", image=[image], **options))
        else:
            parts.append(segment(one, **options))
    labels = xr.concat(parts, dim="sample", combine_attrs="override")
    labels.name = "labels"
    return labels


def analyze_samples(
    store: Any,
    settings: AnalyzeSettings,
    samples: Sequence[int | str] | None = None,
    *,
    progress: bool = True,
    timer: StepTimer | None = None,
) -> dict[str, GraphResult]:
    """The per-image job: decompose (with site contributions), segment, for every graph kind.

    Every sample is independent, so a runner may call this on shards of a store (each
    worker its own ``samples``) and join the results with :func:`concat_results`.

    Parameters
    ----------
    store : xarray.DataTree
        A store (what ``probe()`` or ``open_store()`` returns).
    settings : AnalyzeSettings
        What to compute.
    samples : sequence of int or str, optional
        Positions or ids of the samples to run on; all when None.
    progress : bool
        Show labelled progress bars.

    Returns
    -------
    dict of str to GraphResult
        One entry per graph kind, in the settings' order.

    Examples
    --------
    >>> from interpret_spectral.synthetic import planted_store
    >>> results = analyze_samples(planted_store(n_samples=2), AnalyzeSettings(graphs=("qk",), n_components=3, k=2),
    ...                           progress=False)
    >>> results["qk"].labels.sizes["sample"]
    2
    """
    from interpret_spectral.spectral.decompose import decompose

    timer = timer if timer is not None else StepTimer()
    results: dict[str, GraphResult] = {}
    for kind in settings.kinds:
        name = kind.name
        started = time.perf_counter()
        logger.info("decomposing the %s graphs ...", name)
        # the contributions of every site come from the graphs of the decomposition (computed once)
        decomposition, contributions = decompose(
            store, graph=kind, n_components=settings.n_components, solver=settings.solver, layers=None,
            heads=settings.heads, seed=settings.seed, device=settings.device, progress=progress,
            samples=None if samples is None else list(samples), return_contributions=True,
        )
        timer.add(f"decompose_{name}", started)
        started = time.perf_counter()
        labels = segment_each(decomposition, store, crf=settings.crf, progress=progress, desc=f"segment {name}",
                              **settings.segment_options())
        timer.add(f"segment_{name}", started)
        results[name] = GraphResult(kind, decomposition, labels, contributions["contribution"])
    return results


def concat_results(parts: Sequence[dict[str, GraphResult]]) -> dict[str, GraphResult]:
    """Join the results of :func:`analyze_samples` on shards (along ``sample``, in order).

    Examples
    --------
    >>> concat_results([])
    {}
    """
    import xarray as xr

    if not parts:
        return {}
    joined: dict[str, GraphResult] = {}
    for name, first in parts[0].items():
        pieces = [part[name] for part in parts]
        joined[name] = GraphResult(
            first.kind,
            xr.concat([p.decomposition for p in pieces], dim="sample", combine_attrs="override"),
            xr.concat([p.labels for p in pieces], dim="sample", combine_attrs="override"),
            xr.concat([p.contributions for p in pieces], dim="sample", combine_attrs="override"),
        )
    return joined


def dataset_kmeans(decomposition: Any, k: int, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """One K-Means over the token rows of every sample: cluster ids shared across images.

    For dataset-level decompositions (``decompose_dataset()``), whose components mean
    the same thing in every image; ``segment()`` clusters each image on its own.

    Parameters
    ----------
    decomposition : xarray.Dataset or xarray.DataArray
        A decomposition in the one format, or its ``vectors``.
    k : int
        Number of clusters.
    seed : int
        ``random_state`` of K-Means.
    n_init : int
        K-Means restarts.

    Returns
    -------
    numpy.ndarray
        ``(sample, y, x)`` int32 cluster ids.

    Examples
    --------
    >>> import xarray as xr
    >>> rows = np.repeat(np.eye(2), 8, axis=0).reshape(2, 2, 4, 2)
    >>> labels = dataset_kmeans(xr.DataArray(rows, dims=("sample", "y", "x", "component")), k=2)
    >>> labels.shape, len(np.unique(labels))
    ((2, 2, 4), 2)
    """
    from sklearn.cluster import KMeans

    from interpret_spectral.store.decomposition import as_vectors

    vectors = as_vectors(decomposition)
    array = np.asarray(vectors.values, dtype=np.float64)
    rows = array.reshape(-1, array.shape[-1])
    if not np.isfinite(rows).all():
        raise ValueError("the vectors hold NaN or infinite values; the decomposition failed")
    if not 1 <= int(k) <= len(rows):
        raise ValueError(f"k must be between 1 and the {len(rows)} token rows, got {k}")
    labels = KMeans(n_clusters=int(k), n_init=int(n_init), random_state=int(seed)).fit(rows).labels_
    return labels.reshape(array.shape[:3]).astype(np.int32)

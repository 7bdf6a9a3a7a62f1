"""The evaluation job: segments of a model's eigenvectors scored against a masks folder, streamed.

:func:`evaluate_model` runs a model on the images of a segmentation folder in chunks
of ``chunk_size`` images, and each chunk goes probe -> decompose -> segment -> score
-> write -> drop before the next one is read: memory holds one chunk's activations,
whatever the number of images.  Per image it keeps only its scores (oracle mIoU, the
K chosen and its score).  :func:`evaluate_labels` scores labels made earlier (a
labels file of ``segment``/``analyze``, or the ``labels/`` folder of an earlier
evaluation) the same way, one image at a time.

With ``out`` both write, per image, ``labels/<id>.nc`` (``labels (sample, y, x)`` on
the token grid, as ``segment()`` returns them; :func:`evaluate_labels` reads the
folder back) and ``figures/<id>_segments.png`` (the segments over the image, titled
with the score), and at the end ``summary.json``: per-image scores, their mean, the
worst image, the K chosen per image.  Everything is written beside ``out`` first and
swapped in only when complete.

The dataset-level matched mIoU (``matched=True``) cannot be computed image by image:
its components come from one decomposition whose graphs link every token to its
neighbours *in other images*, so the features of one site of every image are needed
at once.  The chunks are therefore also appended to an HDF5 store on disk (in the
staging folder, removed at the end), which
:func:`~interpret_spectral.spectral.dataset.decompose_dataset` reads one site at a
time; the joint eigenvectors of all images (small: tokens x components) are kept for
the one K-Means whose cluster ids are shared across images, and the cluster-by-class
confusion is accumulated image by image (:class:`~interpret_spectral.evaluation.metrics.ConfusionAccumulator`).

Examples
--------
>>> scores = ImageScores()
>>> round(scores.add("a", np.array([[0, 0, 1, 1]]), np.array([[3, 3, 5, 255]]), k=2), 3)
1.0
>>> scores.summary()["oracle_miou_worst"]
{'image': 'a', 'oracle_miou': 1.0}
"""

from __future__ import annotations

import gc
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from interpret_spectral.pipeline.job import AnalyzeSettings, progress_bar, StepTimer, dataset_kmeans, segment_each
from interpret_spectral.pipeline.outputs import safe_name

__all__ = ["ImageScores", "evaluate_model", "evaluate_labels", "iter_labels", "EVALUATE_OUTPUTS"]

logger = logging.getLogger(__name__)

#: What an evaluation writes into ``out`` (replaced by the next evaluation into the same folder).
EVALUATE_OUTPUTS = ("summary.json", "labels", "figures", "dataset_labels.nc")
_STORE = "store.h5"


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


@dataclass
class ImageScores:
    """Oracle mIoU (paper Table 1) image by image, with the K each image was segmented with.

    Holds three numbers per image, never the images or label maps: memory stays flat
    in the number of images.

    Examples
    --------
    >>> scores = ImageScores()
    >>> _ = scores.add("x", np.array([[1, 1, 2, 2]]), np.array([[0, 0, 1, 1]]), k=2)
    >>> _ = scores.add("y", np.array([[1, 1, 1, 1]]), np.array([[0, 0, 1, 1]]), k=2)
    >>> summary = scores.summary()
    >>> summary["oracle_miou"], summary["oracle_miou_worst"]["image"]
    (0.625, 'y')
    """

    ignore_index: int = 255
    values: dict[str, float] = field(default_factory=dict)
    k: dict[str, int] = field(default_factory=dict)
    k_score: dict[str, float | None] = field(default_factory=dict)

    def add(self, sample_id: str, prediction: Any, mask: Any, k: int | None = None,
            k_score: float | None = None) -> float:
        """Score one image; returns its oracle mIoU (NaN when its mask is all ignore).

        Parameters
        ----------
        sample_id : str
            The image's id.
        prediction : array_like
            ``(H, W)`` integer segment ids, upsampled to the mask's size.
        mask : array_like
            ``(H, W)`` ground-truth class ids (``ignore_index`` = not scored).
        k, k_score : optional
            The number of segments and the score of that choice, for the summary.
        """
        from interpret_spectral.evaluation.metrics import oracle_miou_per_image

        if sample_id in self.values:
            raise ValueError(f"image {sample_id!r} was scored twice; sample ids must be unique")
        value = float(oracle_miou_per_image(np.asarray(prediction), np.asarray(mask), self.ignore_index)[0])
        self.values[sample_id] = value
        self.k[sample_id] = int(k) if k is not None else int(np.unique(np.asarray(prediction)).size)
        self.k_score[sample_id] = _rounded(k_score)
        return value

    def summary(self) -> dict[str, Any]:
        """Per-image scores, their mean over scored images, the worst image, K per image.

        Raises
        ------
        ValueError
            No image had a scored (non-ignore) pixel.
        """
        ids = list(self.values)
        scored = {sid: v for sid, v in self.values.items() if np.isfinite(v)}
        if not scored:
            raise ValueError(f"none of the {len(ids)} images has a scored (non-ignore) ground-truth pixel")
        worst = min(scored, key=lambda sid: scored[sid])
        return {
            "images": ids,
            "scored": len(scored),
            "oracle_miou": _rounded(float(np.mean(list(scored.values())))),
            "oracle_miou_worst": {"image": worst, "oracle_miou": _rounded(scored[worst])},
            "oracle_miou_per_image": {sid: _rounded(v) for sid, v in self.values.items()},
            "k": dict(self.k),
            "k_score": dict(self.k_score),
        }


# -- the output folder --------------------------------------------------------------------------
def _is_output(name: str) -> bool:
    return name in EVALUATE_OUTPUTS or name == _STORE


@contextmanager
def _output_folder(out: Path | None, overwrite: bool) -> Iterator[Path | None]:
    """A staging folder beside ``out``, swapped in only when the block succeeds (None without ``out``)."""
    from interpret_spectral.store.atomic import partial_name, remove_path, replace_dir

    if out is None:
        yield None
        return
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {out} is a file; give a folder name")
    if out.is_dir() and any(_is_output(p.name) for p in out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already holds results ({', '.join(EVALUATE_OUTPUTS)} or {_STORE}); "
                              "pass --overwrite (overwrite=True) to replace them, or choose another folder")
    staging = partial_name(out)
    remove_path(staging)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir()
    try:
        yield staging
        remove_path(staging / _STORE)
        replace_dir(staging, out, carry=lambda name: not _is_output(name))
    finally:
        remove_path(staging)


class _Recorder:
    """Scores every image and writes its labels and figure into the staging folder."""

    def __init__(self, staging: Path | None, figures: bool, write_labels: bool, ignore_index: int) -> None:
        self.staging = staging
        self.figures = figures and staging is not None
        self.write_labels = write_labels and staging is not None
        self.scores = ImageScores(ignore_index=ignore_index)
        self.written: list[str] = []

    def record(self, sample_id: str, labels: Any, mask: np.ndarray, image: Any = None) -> float:
        """``labels``: one sample's ``labels (sample, y, x)`` on the token grid."""
        from interpret_spectral.segmentation.upsample import upsample_labels

        grid = np.asarray(labels.isel(sample=0).transpose("y", "x").values)
        k = int(labels["k"].values[0]) if "k" in labels.coords else None
        k_score = float(labels["k_score"].values[0]) if "k_score" in labels.coords else None
        value = self.scores.add(sample_id, upsample_labels(grid, mask.shape), mask, k=k, k_score=k_score)
        if self.staging is None:
            return value
        stem = safe_name(sample_id)
        if self.write_labels:
            from interpret_spectral.store.results import save_netcdf

            save_netcdf(labels, self.staging / "labels" / f"{stem}.nc")
        if self.figures and image is not None:
            from interpret_spectral import viz

            score = "n/a (mask all ignore)" if not np.isfinite(value) else f"{value:.3f}"
            path = self.staging / "figures" / f"{stem}_segments.png"
            figure = viz.plot_segments(labels, image, sample=0, path=path,
                                       title=f"{sample_id}: oracle mIoU {score}, k = {self.scores.k[sample_id]}")
            figure.clear()  # a figure is a cycle of artists: free its pictures now, not at the next gc pass
            self.written.append(str(path.relative_to(self.staging)))
        return value

    def summary(self) -> dict[str, Any]:
        summary = self.scores.summary()
        if self.staging is not None:
            summary["outputs"] = {
                "labels": "labels/<image id>.nc" if self.write_labels else None,
                "figures": "figures/<image id>_segments.png" if self.figures else None,
            }
        return summary


def _write_summary(staging: Path | None, summary: dict[str, Any], json_path: str | os.PathLike[str] | None) -> None:
    from interpret_spectral.store.atomic import replacing_file

    text = json.dumps(summary, indent=2) + "\n"
    if staging is not None:
        (staging / "summary.json").write_text(text)
    if json_path is not None:
        with replacing_file(Path(json_path).expanduser()) as tmp:
            tmp.write_text(text)


# -- running a model ----------------------------------------------------------------------------
def _as_folder(data: Any) -> Any:
    from interpret_spectral.evaluation.folders import SegmentationFolder

    return data if isinstance(data, SegmentationFolder) else SegmentationFolder(Path(data).expanduser())


def _chunks(ids: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def _same_shape_groups(samples: Sequence[Any], by_size: bool) -> list[list[Any]]:
    """Samples in groups one store can hold: all together, or (short-side resizing) by image size."""
    if not by_size:
        return [list(samples)]
    groups: dict[tuple[int, int], list[Any]] = {}
    for sample in samples:
        groups.setdefault(sample.image.size, []).append(sample)
    return list(groups.values())


def _n_classes(folder: Any, n_classes: int | None) -> int:
    """Classes for the matched mIoU: ``n_classes``, else ``classes.txt``, else read from the masks."""
    if n_classes is not None:
        if int(n_classes) < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        if folder.n_classes is not None and int(n_classes) != folder.n_classes:
            raise ValueError(f"n_classes={n_classes} but {folder.root / 'classes.txt'} lists {folder.n_classes} "
                             "classes; leave n_classes out or fix classes.txt")
        return int(n_classes)
    if folder.n_classes is None:
        logger.info("no classes.txt in %s: reading the number of classes from the masks ...", folder.root)
    return int(folder.infer_n_classes())


def evaluate_model(
    model: Any,
    data: Any,
    out: str | os.PathLike[str] | None = None,
    *,
    settings: AnalyzeSettings | None = None,
    limit: int | None = None,
    layers: Any = None,
    batch_size: int = 4,
    chunk_size: int | None = None,
    matched: bool = False,
    n_classes: int | None = None,
    n_clusters: int | None = None,
    matching: str = "hungarian",
    probe_options: dict[str, Any] | None = None,
    figures: bool = True,
    overwrite: bool = False,
    json_path: str | os.PathLike[str] | None = None,
    model_name: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run a model on a segmentation folder's images and score its segments, chunk by chunk.

    Per chunk of ``chunk_size`` images: ``probe()`` (in memory), ``decompose()`` with
    the settings' one graph kind, ``segment()`` per image (K fixed or chosen per image),
    oracle mIoU against the mask (labels upsampled by nearest neighbour), labels and
    figure written, and the chunk dropped.  See the module docstring for ``matched``.

    Parameters
    ----------
    model : object
        A model some adapter knows (see :func:`interpret_spectral.probe`).
    data : SegmentationFolder or path-like
        ``images/``, ``masks/`` and optionally ``classes.txt`` (needed for nothing
        but the names of the per-class table of the matched mIoU).
    out : path-like, optional
        Folder for ``labels/``, ``figures/`` and ``summary.json``; nothing is written without it.
    settings : AnalyzeSettings, optional
        One graph kind, components, solver, K choice, seed, device (default
        ``AnalyzeSettings(graphs=("qk",))``).
    limit : int, optional
        Evaluate the first ``limit`` images only.
    layers : optional
        Sites to record (indices, names or glob patterns); all when None.
    batch_size : int
        Images per forward pass.
    chunk_size : int, optional
        Images held in memory at once (default ``batch_size``).
    matched : bool
        Also the dataset-level matched mIoU (one joint decomposition, one K-Means
        with ``n_clusters`` clusters, ``matching`` of clusters to classes).
    n_classes : int, optional
        Classes of the matched mIoU; default: ``classes.txt``, else read from the masks.
    n_clusters : int, optional
        Clusters of the matched mIoU (default ``settings.k`` or the number of classes).
    matching : {"hungarian", "greedy"}
        Cluster-to-class assignment of the matched mIoU.
    probe_options : dict, optional
        More ``probe()`` keywords: ``device``, ``dtype``, ``image_size``, ``resize`` ...
    figures : bool
        Draw ``figures/<id>_segments.png`` (with ``out``).
    overwrite : bool
        Replace the results of an earlier evaluation in ``out``.
    json_path : path-like, optional
        Also write the summary there.
    model_name : str, optional
        The model's name for the summary.
    progress : bool
        Show a progress bar over images.

    Returns
    -------
    dict
        The summary (also ``out/summary.json``): ``oracle_miou`` (mean over scored
        images), ``oracle_miou_worst``, ``oracle_miou_per_image``, ``k`` and
        ``k_score`` per image, the settings, and with ``matched`` the matched mIoU.

    Examples
    --------
    >>> import timm
    >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64).eval()
    >>> summary = evaluate_model(model, "data/voc", "out/eval", limit=4)  # doctest: +SKIP
    >>> summary["oracle_miou_worst"]  # doctest: +SKIP
    {'image': 'vainf_0003', 'oracle_miou': 0.21}
    """
    from interpret_spectral.capture.engine import probe
    from interpret_spectral.spectral.decompose import decompose

    settings = settings if settings is not None else AnalyzeSettings(graphs=("qk",))
    if len(settings.kinds) != 1:
        raise ValueError(f"evaluate scores one graph kind at a time, got {settings.graph_names}; run it once per kind")
    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    chunk = int(chunk_size if chunk_size is not None else batch_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    kind = settings.kinds[0]
    folder = _as_folder(data)
    ids = folder.ids[: limit or None]
    options = dict(probe_options or {})
    classes = _n_classes(folder, n_classes) if matched else None  # before anything slow
    timer = StepTimer()
    summary: dict[str, Any] = {
        "data": str(folder.root), "model": model_name or "", "graph": kind.name,
        "solver": str(getattr(settings.solver, "name", settings.solver)), "n_components": int(settings.n_components),
        "settings": {**{key: value for key, value in settings.segment_options().items() if key != "k"},
                     "k": settings.k if settings.k is not None else "chosen per image",
                     "heads": settings.heads, "chunk_size": chunk,
                     "layers": "all" if layers is None else [str(x) for x in layers]},
    }
    with _output_folder(Path(out).expanduser() if out is not None else None, overwrite) as staging, \
            tempfile.TemporaryDirectory(prefix="interpret-spectral-evaluate-") as scratch:
        recorder = _Recorder(staging, figures, write_labels=True, ignore_index=folder.ignore_index)
        store_path = (staging or Path(scratch)) / _STORE if matched else None
        grid: tuple[int, int] | None = None
        k_selection = None
        bar = progress_bar(None, progress, f"evaluate {kind.name}", total=len(ids))
        with bar:
            for chunk_ids in _chunks(ids, chunk):
                samples = [folder[folder.index(sid)] for sid in chunk_ids]
                for group in _same_shape_groups(samples, options.get("resize") == "short_side"):
                    group_ids = [s.id for s in group]
                    started = time.perf_counter()
                    store = probe(model, [s.image for s in group], sample_ids=group_ids, layers=layers,
                                  batch_size=batch_size, progress=False, out=store_path,
                                  resume=store_path is not None, **options)
                    timer.add("probe", started)
                    try:
                        started = time.perf_counter()
                        decomposition = decompose(store, graph=kind, n_components=settings.n_components,
                                                  solver=settings.solver, heads=settings.heads, seed=settings.seed,
                                                  device=settings.device, progress=False, samples=group_ids)
                        timer.add("decompose", started)
                        started = time.perf_counter()
                        labels = segment_each(decomposition, store, crf=settings.crf, progress=False,
                                              **settings.segment_options())
                        timer.add("segment", started)
                    finally:
                        store.close()
                    grid = grid or (int(decomposition.sizes["y"]), int(decomposition.sizes["x"]))
                    k_selection = labels.attrs.get("k_selection", k_selection)
                    started = time.perf_counter()
                    for i, sample in enumerate(group):
                        recorder.record(sample.id, labels.isel(sample=[i]), sample.mask, sample.image)
                    timer.add("score_and_write", started)
                    bar.update(len(group))
                    del store, decomposition, labels
                del samples
                gc.collect()  # the chunk's cyclic garbage (figures, xarray objects) goes before the next chunk
        summary.update(recorder.summary())
        if settings.k is None:
            summary["settings"]["k_selection"] = str(k_selection)
        if matched:
            assert store_path is not None and grid is not None and classes is not None
            started = time.perf_counter()
            summary["matched"] = _matched(store_path, folder, ids, kind, settings, grid, classes,
                                          n_clusters if n_clusters is not None else settings.k or classes,
                                          matching, staging, progress)
            summary["matched_miou"] = summary["matched"]["miou"]
            summary["matched_pixel_accuracy"] = summary["matched"]["pixel_accuracy"]
            timer.add("matched", started)
        summary["seconds"] = timer.seconds
        _write_summary(staging, summary, json_path)
    return summary


def _matched(store_path: Path, folder: Any, ids: Sequence[str], kind: Any, settings: AnalyzeSettings,
             grid: tuple[int, int], n_classes: int, n_clusters: int, matching: str, staging: Path | None,
             progress: bool) -> dict[str, Any]:
    """Dataset-level matched mIoU: joint decomposition (read site by site), K-Means, confusion per image."""
    import xarray as xr

    from interpret_spectral.evaluation.metrics import ConfusionAccumulator
    from interpret_spectral.segmentation.upsample import upsample_labels
    from interpret_spectral.spectral.dataset import decompose_dataset

    logger.info("dataset-level decomposition of %d images ...", len(ids))
    joint = decompose_dataset(store_path, graph=kind, n_components=settings.n_components, solver="exact",
                              grid=grid, seed=settings.seed, progress=progress)
    clusters = dataset_kmeans(joint, n_clusters, settings.seed)
    order = [str(s) for s in joint["sample"].values]
    accumulator = ConfusionAccumulator(n_classes, n_clusters=n_clusters, ignore_index=folder.ignore_index)
    for i, sample_id in enumerate(progress_bar(order, progress, "matched", total=len(order))):
        mask = folder.mask(sample_id)
        accumulator.update(upsample_labels(clusters[i], mask.shape), mask)
    result = accumulator.result(matching=matching)  # type: ignore[arg-type]
    names = folder.classes if folder.n_classes is not None else [str(c) for c in range(n_classes)]
    if staging is not None:
        from interpret_spectral.store.results import save_netcdf

        save_netcdf(xr.DataArray(clusters, dims=("sample", "y", "x"), coords={"sample": order}, name="labels",
                                 attrs={"method": "dataset-level kmeans", "n_clusters": int(n_clusters),
                                        "graph": kind.name}),
                    staging / "dataset_labels.nc")
    return {
        "miou": _rounded(result.miou), "pixel_accuracy": _rounded(result.pixel_accuracy),
        "n_classes": int(n_classes), "n_clusters": int(n_clusters), "matching": matching,
        "classes_from": "classes.txt" if folder.n_classes is not None else "masks or n_classes",
        "iou_per_class": {name: _rounded(v) for name, v, present in zip(names, result.iou, result.present) if present},
    }


# -- scoring labels made earlier -----------------------------------------------------------------
def iter_labels(source: str | os.PathLike[str]) -> Iterator[tuple[str, Any]]:
    """One sample's ``labels (sample, y, x)`` at a time, from a labels file or a folder of them.

    Parameters
    ----------
    source : path-like
        A labels file (``segment``/``analyze``: ``labels_<graph>.nc``), or a folder of
        labels files (the ``labels/`` folder an evaluation writes; read one file at a time).

    Yields
    ------
    (str, xarray.DataArray)
        The sample id and its labels (one sample, token grid, with ``k`` when known).

    Examples
    --------
    >>> next(iter_labels("/no/such/labels.nc"))  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    FileNotFoundError: labels (segment) file /no/such/labels.nc does not exist
    """
    from interpret_spectral.store.results import open_labels

    source = Path(source).expanduser()
    if source.is_dir():
        files = sorted(source.glob("*.nc"))
        if not files:
            raise FileNotFoundError(f"{source} holds no labels files (*.nc); give a labels file or the labels/ "
                                    "folder of an evaluation")
    else:
        files = [source]
    for path in files:
        labels = open_labels(path)
        for i, sample_id in enumerate(labels["sample"].values):
            yield str(sample_id), labels.isel(sample=[i])


def evaluate_labels(
    labels: str | os.PathLike[str],
    data: Any,
    out: str | os.PathLike[str] | None = None,
    *,
    limit: int | None = None,
    figures: bool = True,
    overwrite: bool = False,
    json_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score labels made earlier against a segmentation folder's masks, one image at a time.

    Parameters
    ----------
    labels : path-like
        A labels file or a folder of them (see :func:`iter_labels`); sample ids must be
        the image file stems.
    data : SegmentationFolder or path-like
        ``images/`` and ``masks/`` (``classes.txt`` is not needed).
    out : path-like, optional
        Folder for ``figures/`` and ``summary.json``.
    limit : int, optional
        Score the first ``limit`` samples of the labels only.
    figures, overwrite, json_path, progress
        As for :func:`evaluate_model`.

    Returns
    -------
    dict
        The summary (see :func:`evaluate_model`).

    Examples
    --------
    >>> evaluate_labels("out/eval/labels", "data/voc")["oracle_miou"]  # doctest: +SKIP
    0.4521
    """
    folder = _as_folder(data)
    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    with _output_folder(Path(out).expanduser() if out is not None else None, overwrite) as staging:
        recorder = _Recorder(staging, figures, write_labels=False, ignore_index=folder.ignore_index)
        bar = progress_bar(None, progress, "evaluate labels", total=limit)
        with bar:
            for n, (sample_id, one) in enumerate(iter_labels(labels)):
                if limit is not None and n >= int(limit):
                    break
                try:
                    position = folder.index(sample_id)
                except KeyError:
                    raise ValueError(f"labels of {sample_id!r} have no mask in {folder.root / 'masks'}; the sample "
                                     "ids must be the image file stems") from None
                sample = folder[position] if recorder.figures else None
                mask = sample.mask if sample is not None else folder.mask(sample_id)
                recorder.record(sample_id, one, mask, None if sample is None else sample.image)
                bar.update(1)
        summary = {"data": str(folder.root), "labels": str(labels), **recorder.summary()}
        _write_summary(staging, summary, json_path)
    return summary

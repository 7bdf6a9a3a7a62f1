"""Segmentation scores: oracle mIoU and matched (Hungarian / greedy) mIoU.

Two protocols score an unsupervised segmentation against pixel ground truth:

* :func:`oracle_miou` (paper Table 1): per image, every predicted region takes the
  ground-truth class it overlaps most; the IoU of every ground-truth class present
  in the image is averaged, then the per-image values are averaged over images.
* :func:`matched_miou` (PiCIE / STEGO): one confusion histogram of cluster id versus
  class is accumulated over the whole dataset (:class:`ConfusionAccumulator`), one
  assignment cluster -> class is chosen for the dataset (Hungarian one-to-one or
  greedy many-to-one), and the per-class IoU of the mapped prediction is averaged.

Both take integer label maps of the *same* shape as the ground truth: upsample
predicted labels (nearest neighbour) to the mask size first.  Ground-truth pixels
equal to ``ignore_index`` take no part in any score.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "oracle_miou",
    "oracle_miou_per_image",
    "matched_miou",
    "ConfusionAccumulator",
    "MatchedResult",
]

Matching = Literal["hungarian", "greedy"]
_MATCHINGS = ("hungarian", "greedy")


def _label_array(x: Any, what: str) -> np.ndarray:
    """Return ``x`` as an integer numpy array or raise a clear error."""
    arr = np.asarray(x)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"{what} must hold integer label ids, got dtype {arr.dtype}; "
            "convert soft scores to labels first (e.g. argmax over classes)."
        )
    return arr


def _check_same_shape(pred: np.ndarray, gt: np.ndarray, index: int | None) -> None:
    if pred.shape != gt.shape:
        where = "" if index is None else f" (image {index})"
        raise ValueError(
            f"pred has shape {pred.shape} but gt has shape {gt.shape}{where}: the two "
            "must have the same shape. Upsample the predicted labels to the mask size "
            "with nearest-neighbour interpolation (e.g. "
            "torch.nn.functional.interpolate(..., mode='nearest') or "
            "PIL.Image.resize(..., Image.NEAREST)) before scoring."
        )


def _is_sequence_of_images(x: Any) -> bool:
    return not hasattr(x, "__array__") and not np.isscalar(x) and isinstance(x, Iterable)


def _image_pairs(pred: Any, gt: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(pred, gt)`` 2-D pairs from one pair, stacked batches or sequences.

    Accepted: two (H, W) arrays; two (N, H, W) arrays; or two equal-length iterables
    of (H, W) arrays (images may differ in size).  xarray DataArrays count as arrays.
    """
    pred_seq, gt_seq = _is_sequence_of_images(pred), _is_sequence_of_images(gt)
    if pred_seq != gt_seq:
        raise TypeError(
            "pred and gt must both be arrays or both be sequences of per-image arrays; "
            f"got {type(pred).__name__} and {type(gt).__name__}."
        )
    if pred_seq:
        sentinel = object()
        for i, (p, g) in enumerate(itertools.zip_longest(pred, gt, fillvalue=sentinel)):
            if p is sentinel or g is sentinel:
                raise ValueError(
                    "pred and gt sequences have different lengths: give one predicted "
                    "label map per ground-truth mask."
                )
            p_arr, g_arr = _label_array(p, f"pred[{i}]"), _label_array(g, f"gt[{i}]")
            if g_arr.ndim != 2:
                raise ValueError(
                    f"gt[{i}] has shape {g_arr.shape}; each element of a sequence must be "
                    "one (H, W) label map."
                )
            _check_same_shape(p_arr, g_arr, i)
            yield p_arr, g_arr
        return
    p_arr, g_arr = _label_array(pred, "pred"), _label_array(gt, "gt")
    _check_same_shape(p_arr, g_arr, None)
    if g_arr.ndim == 2:
        yield p_arr, g_arr
    elif g_arr.ndim == 3:
        yield from zip(p_arr, g_arr, strict=True)
    else:
        raise ValueError(
            f"label maps must be (H, W) or (N, H, W); got shape {g_arr.shape}."
        )


def _valid_gt(gt: np.ndarray, ignore_index: int, n_classes: int | None) -> np.ndarray:
    """Boolean mask of scored pixels; checks class ids are in range."""
    valid = gt != ignore_index
    values = gt[valid]
    if values.size and values.min() < 0:
        raise ValueError(
            f"gt holds negative class id {int(values.min())}; class ids must be >= 0 and "
            f"ignored pixels must equal ignore_index={ignore_index}."
        )
    if n_classes is not None and values.size and values.max() >= n_classes:
        raise ValueError(
            f"gt holds class id {int(values.max())} but n_classes={n_classes}; pass the "
            f"dataset's number of classes, and mark ignored pixels with "
            f"ignore_index={ignore_index}."
        )
    return valid


def _oracle_image(pred: np.ndarray, gt: np.ndarray, ignore_index: int) -> float:
    valid = _valid_gt(gt, ignore_index, None)
    if not valid.any():
        return float("nan")
    p, g = pred[valid], gt[valid].astype(np.int64)
    regions, region_of = np.unique(p, return_inverse=True)
    classes, class_of = np.unique(g, return_inverse=True)
    n_r, n_c = regions.size, classes.size
    overlap = np.bincount(region_of * n_c + class_of, minlength=n_r * n_c).reshape(n_r, n_c)
    mapped = overlap.argmax(axis=1)[region_of]  # index into `classes`, per pixel
    intersection = np.bincount(class_of[mapped == class_of], minlength=n_c)
    predicted = np.bincount(mapped, minlength=n_c)
    actual = np.bincount(class_of, minlength=n_c)
    iou = intersection / (predicted + actual - intersection)
    return float(iou.mean())


def oracle_miou_per_image(pred: Any, gt: Any, ignore_index: int = 255) -> np.ndarray:
    """Oracle mIoU of every image (paper Table 1).

    In each image, every predicted region (pixels sharing a label id in ``pred``)
    takes the ground-truth class it overlaps most, counting only pixels whose ground
    truth is not ``ignore_index`` (ties go to the lower class id).  The IoU of every
    ground-truth class present in the image is computed over the non-ignored pixels
    and averaged.  Region ids need not be contiguous or match class ids.

    Parameters
    ----------
    pred, gt : array_like or iterable of array_like
        Integer label maps of identical shape: one (H, W) pair, (N, H, W) stacks, or
        two equal-length iterables of (H, W) maps (sizes may differ between images).
    ignore_index : int
        Ground-truth value of pixels that are not scored.

    Returns
    -------
    numpy.ndarray
        float64 of shape (N,) (N = 1 for a single pair); NaN for an image whose
        ground truth is entirely ``ignore_index``.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.array([[0, 0, 1, 1]])
    >>> oracle_miou_per_image(np.array([[5, 5, 5, 7]]), gt)
    array([0.58333333])
    """
    return np.array([_oracle_image(p, g, ignore_index) for p, g in _image_pairs(pred, gt)],
                    dtype=np.float64)


def oracle_miou(pred: Any, gt: Any, ignore_index: int = 255) -> float:
    """Oracle mIoU, averaged over images (paper Table 1).

    See :func:`oracle_miou_per_image` for the per-image rule; this returns the mean
    over images, skipping images whose ground truth is entirely ignored.

    Parameters
    ----------
    pred, gt : array_like or iterable of array_like
        Integer label maps of identical shape: one (H, W) pair, (N, H, W) stacks, or
        two equal-length iterables of (H, W) maps.
    ignore_index : int
        Ground-truth value of pixels that are not scored.

    Returns
    -------
    float
        Mean oracle mIoU in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.array([[0, 0, 1, 255]])
    >>> oracle_miou(np.array([[3, 3, 4, 3]]), gt)
    1.0
    """
    per_image = oracle_miou_per_image(pred, gt, ignore_index=ignore_index)
    scored = per_image[np.isfinite(per_image)]
    if scored.size == 0:
        raise ValueError(
            "no image has a ground-truth pixel that is not ignore_index="
            f"{ignore_index}; nothing can be scored."
        )
    return float(scored.mean())


@dataclasses.dataclass(frozen=True, eq=False)
class MatchedResult:
    """Scores of a dataset-level cluster -> class matching.

    Attributes
    ----------
    miou : float
        Mean IoU over the classes present in the ground truth.
    pixel_accuracy : float
        Fraction of scored pixels whose mapped cluster equals the class.
    iou : numpy.ndarray
        (n_classes,) IoU per class; NaN where the class is neither in the ground
        truth nor predicted.
    present : numpy.ndarray
        (n_classes,) bool, the class occurs in the ground truth (the classes averaged
        into ``miou``).
    assignment : numpy.ndarray
        (n_clusters,) int, the class each cluster is mapped to; -1 for a cluster that
        is left unmatched (Hungarian with more clusters than classes) or that never
        occurred (greedy).
    matching : str
        ``"hungarian"`` or ``"greedy"``.
    confusion : numpy.ndarray
        (n_clusters, n_classes) int64 pixel counts the matching was computed from.
    """

    miou: float
    pixel_accuracy: float
    iou: np.ndarray
    present: np.ndarray
    assignment: np.ndarray
    matching: str
    confusion: np.ndarray


class ConfusionAccumulator:
    """Streaming cluster-by-class pixel histogram for :func:`matched_miou`.

    Parameters
    ----------
    n_classes : int
        Number of ground-truth classes; ground-truth ids must lie in
        ``[0, n_classes)`` or equal ``ignore_index``.
    n_clusters : int or None
        Number of predicted clusters; predicted ids must lie in ``[0, n_clusters)``.
        ``None`` grows the histogram to the largest id seen (ids must be >= 0).
    ignore_index : int
        Ground-truth value of pixels that are not counted.

    Examples
    --------
    >>> import numpy as np
    >>> acc = ConfusionAccumulator(n_classes=2)
    >>> acc.update(np.array([[1, 1, 0]]), np.array([[0, 0, 1]]))
    >>> acc.result().miou
    1.0
    """

    def __init__(self, n_classes: int, n_clusters: int | None = None,
                 ignore_index: int = 255) -> None:
        if int(n_classes) < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}.")
        if n_clusters is not None and int(n_clusters) < 1:
            raise ValueError(f"n_clusters must be >= 1 or None, got {n_clusters}.")
        self.n_classes = int(n_classes)
        self.ignore_index = int(ignore_index)
        self._fixed_clusters = n_clusters is not None
        self._confusion = np.zeros((int(n_clusters) if n_clusters else 0, self.n_classes),
                                   dtype=np.int64)

    @property
    def confusion(self) -> np.ndarray:
        """(n_clusters, n_classes) pixel counts accumulated so far (a copy)."""
        return self._confusion.copy()

    def update(self, pred: Any, gt: Any) -> None:
        """Add one image or a batch to the histogram.

        Parameters
        ----------
        pred, gt : array_like or iterable of array_like
            Integer label maps of identical shape, as for :func:`oracle_miou`.

        Examples
        --------
        >>> import numpy as np
        >>> acc = ConfusionAccumulator(n_classes=3, n_clusters=3)
        >>> acc.update(np.zeros((2, 4, 4), int), np.ones((2, 4, 4), int))
        >>> int(acc.confusion[0, 1])
        32
        """
        for p, g in _image_pairs(pred, gt):
            valid = _valid_gt(g, self.ignore_index, self.n_classes)
            p_valid = p[valid].astype(np.int64)
            if p_valid.size == 0:
                continue
            low, high = int(p_valid.min()), int(p_valid.max())
            if low < 0:
                raise ValueError(
                    f"pred holds cluster id {low}; cluster ids must be >= 0."
                )
            if high >= self._confusion.shape[0]:
                if self._fixed_clusters:
                    raise ValueError(
                        f"pred holds cluster id {high} but n_clusters="
                        f"{self._confusion.shape[0]}; raise n_clusters or leave it None."
                    )
                grown = np.zeros((high + 1, self.n_classes), dtype=np.int64)
                grown[: self._confusion.shape[0]] = self._confusion
                self._confusion = grown
            k = self._confusion.shape[0]
            counts = np.bincount(p_valid * self.n_classes + g[valid].astype(np.int64),
                                 minlength=k * self.n_classes)
            self._confusion += counts.reshape(k, self.n_classes)

    def result(self, matching: Matching = "hungarian") -> MatchedResult:
        """Match clusters to classes and score the accumulated histogram.

        Parameters
        ----------
        matching : {"hungarian", "greedy"}
            ``"hungarian"``: one-to-one assignment maximising matched pixels
            (``scipy.optimize.linear_sum_assignment(maximize=True)``); clusters left
            over stay unmatched (their pixels count as misses) and classes left over
            get no pixels.  ``"greedy"``: many-to-one, each cluster goes to the class
            it overlaps most (ties to the lower class id).

        Returns
        -------
        MatchedResult
            IoU per class is ``TP / (TP + FP + FN)`` of the mapped prediction; ``miou``
            averages it over the classes present in the ground truth (the PiCIE and
            STEGO code average over classes with a non-zero union instead; the two
            agree whenever every class occurs in the ground truth).

        Examples
        --------
        >>> import numpy as np
        >>> acc = ConfusionAccumulator(n_classes=2)
        >>> acc.update(np.array([[0, 0, 1, 2]]), np.array([[1, 1, 0, 0]]))
        >>> acc.result("greedy").miou
        1.0
        """
        if matching not in _MATCHINGS:
            raise ValueError(f"matching must be one of {_MATCHINGS}, got {matching!r}.")
        confusion = self._confusion
        total = int(confusion.sum())
        if total == 0:
            raise ValueError(
                "no scored pixel was accumulated: call update() with label maps whose "
                f"ground truth is not entirely ignore_index={self.ignore_index}."
            )
        k = confusion.shape[0]
        assignment = np.full(k, -1, dtype=np.int64)
        if matching == "hungarian":
            rows, cols = linear_sum_assignment(confusion, maximize=True)
            assignment[rows] = cols
        else:
            occurring = confusion.sum(axis=1) > 0
            assignment[occurring] = confusion[occurring].argmax(axis=1)
        matched = assignment >= 0
        mapped = np.zeros((self.n_classes, self.n_classes), dtype=np.int64)
        np.add.at(mapped, assignment[matched], confusion[matched])
        tp = np.diag(mapped).astype(np.float64)
        predicted = mapped.sum(axis=1)
        actual = confusion.sum(axis=0)
        union = predicted + actual - tp
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        present = actual > 0
        return MatchedResult(
            miou=float(iou[present].mean()),
            pixel_accuracy=float(tp.sum() / total),
            iou=iou,
            present=present,
            assignment=assignment,
            matching=matching,
            confusion=confusion.copy(),
        )


def matched_miou(pred: Any, gt: Any, n_classes: int, matching: Matching = "hungarian",
                 ignore_index: int = 255, n_clusters: int | None = None) -> MatchedResult:
    """Dataset-level matched mIoU (PiCIE / STEGO protocol).

    Accumulates one cluster-by-class histogram over all images, then matches
    clusters to classes once for the whole dataset (see
    :meth:`ConfusionAccumulator.result`).  For data that does not fit in memory,
    feed a :class:`ConfusionAccumulator` batch by batch instead.

    Parameters
    ----------
    pred, gt : array_like or iterable of array_like
        Integer label maps of identical shape: one (H, W) pair, (N, H, W) stacks, or
        two equal-length iterables of (H, W) maps.
    n_classes : int
        Number of ground-truth classes.
    matching : {"hungarian", "greedy"}
        One-to-one Hungarian matching or many-to-one greedy matching.
    ignore_index : int
        Ground-truth value of pixels that are not scored.
    n_clusters : int or None
        Number of clusters (may differ from ``n_classes``); ``None`` takes the
        largest predicted id + 1.

    Returns
    -------
    MatchedResult

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    >>> pred = np.array([[2, 2, 0, 0], [1, 1, 1, 1]])
    >>> r = matched_miou(pred, gt, n_classes=3)
    >>> r.miou, r.assignment.tolist()
    (1.0, [1, 2, 0])
    """
    accumulator = ConfusionAccumulator(n_classes, n_clusters=n_clusters,
                                       ignore_index=ignore_index)
    accumulator.update(pred, gt)
    return accumulator.result(matching=matching)

"""Derived ground truth: the spatial-semantic (left / right) labels of paper Figure 7.

A "what" representation groups all cars together; a "where" representation tells
the car on the left from the car on the right.  :func:`spatial_semantic` turns a
semantic mask into one whose classes are ``class x side``, to be scored with
:func:`interpret_spectral.metrics.matched_miou`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["SpatialSemanticLabels", "spatial_semantic", "spatial_semantic_names"]

LEFT, RIGHT = 0, 1


@dataclasses.dataclass(frozen=True, eq=False)
class SpatialSemanticLabels:
    """A left/right-split label map and its classes.

    Attributes
    ----------
    mask : numpy.ndarray
        (H, W) new class ids, ``2 * class + side`` (side 0 left, 1 right), and
        ``ignore_index`` for dropped or originally ignored pixels.  uint8 when every
        id fits, int32 otherwise.
    class_names : tuple of str
        Name of every new id, length ``n_classes``.
    n_classes : int
        ``2 * len(original class names)``, the same for every image of a dataset.
    """

    mask: np.ndarray
    class_names: tuple[str, ...]
    n_classes: int


def spatial_semantic_names(class_names: Sequence[str],
                           keep_whole: Collection[int] = ()) -> tuple[str, ...]:
    """Names of the ids produced by :func:`spatial_semantic`.

    Id ``2c`` is ``"<name>-left"`` and ``2c + 1`` is ``"<name>-right"``; for a class
    in ``keep_whole`` id ``2c`` carries the plain name and ``2c + 1`` is never used
    (named ``"<name>-unused"``).

    Parameters
    ----------
    class_names : sequence of str
        Original class names, indexed by class id.
    keep_whole : collection of int
        Class ids that are not split.

    Returns
    -------
    tuple of str

    Examples
    --------
    >>> spatial_semantic_names(["background", "car"], keep_whole=[0])
    ('background', 'background-unused', 'car-left', 'car-right')
    """
    names: list[str] = []
    for class_id, name in enumerate(class_names):
        if class_id in keep_whole:
            names += [str(name), f"{name}-unused"]
        else:
            names += [f"{name}-left", f"{name}-right"]
    return tuple(names)


def spatial_semantic(mask: Any, class_names: Sequence[str], min_area: int = 50,
                     center_margin: float = 0.05, ignore_index: int = 255,
                     keep_whole: Collection[int] = ()) -> SpatialSemanticLabels:
    """Split every region of every class into a left or a right subclass (Figure 7).

    Each class's pixels are split into connected regions (``scipy.ndimage.label``,
    4-connectivity).  A region whose centroid column ``cx`` (pixel centres at
    ``0 .. W-1``) lies left of the vertical centre line ``(W - 1) / 2`` is nearer
    the left border and becomes ``2 * class + 0``; one right of it becomes
    ``2 * class + 1``.  Set to ``ignore_index`` (dropped) are:

    * regions of fewer than ``min_area`` pixels;
    * regions with ``|cx - (W - 1) / 2| <= center_margin * W`` (so a region centred
      exactly on the centre line is always dropped, whatever the margin).

    Classes in ``keep_whole`` (e.g. ``[0]`` for VOC's background) are neither split
    nor dropped: all their pixels become ``2 * class``.  Pixels equal to
    ``ignore_index`` stay ignored.

    Parameters
    ----------
    mask : array_like
        (H, W) integer class ids in ``[0, len(class_names))`` or ``ignore_index``.
    class_names : sequence of str
        Original class names; fixes the id scheme so that all images of a dataset
        share it.
    min_area : int
        Smallest region kept, in pixels.
    center_margin : float
        Half-width of the central band whose regions are dropped, as a fraction of
        the image width, in [0, 0.5).
    ignore_index : int
        Value of ignored pixels, in the input and the output.
    keep_whole : collection of int
        Class ids that are not split.

    Returns
    -------
    SpatialSemanticLabels
        The new mask, the names of its ids and their number ``2 * len(class_names)``.

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.zeros((4, 20), np.uint8)
    >>> mask[:, 1:4] = 1; mask[:, 15:19] = 1
    >>> out = spatial_semantic(mask, ["background", "car"], min_area=4, keep_whole=[0])
    >>> [out.class_names[i] for i in np.unique(out.mask)]
    ['background', 'car-left', 'car-right']
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be one (H, W) label map, got shape {arr.shape}; "
                         "call spatial_semantic once per image.")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"mask must hold integer class ids, got dtype {arr.dtype}.")
    n_original = len(class_names)
    if n_original < 1:
        raise ValueError("class_names is empty; give the dataset's class names.")
    if not 0.0 <= center_margin < 0.5:
        raise ValueError(f"center_margin must lie in [0, 0.5), got {center_margin}.")
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area}.")
    bad_keep = [c for c in keep_whole if not 0 <= c < n_original]
    if bad_keep:
        raise ValueError(f"keep_whole ids {bad_keep} are not class ids of class_names "
                         f"(0 .. {n_original - 1}).")
    n_new = 2 * n_original
    if 0 <= ignore_index < n_new:
        raise ValueError(
            f"ignore_index={ignore_index} collides with the new ids 0 .. {n_new - 1}; "
            "use an ignore_index of at least 2 * len(class_names) (or a negative one)."
        )
    valid = arr != ignore_index
    present = np.unique(arr[valid])
    if present.size and (present[0] < 0 or present[-1] >= n_original):
        raise ValueError(
            f"mask holds class ids {present.tolist()} outside 0 .. {n_original - 1}; "
            f"mark ignored pixels with ignore_index={ignore_index}."
        )

    fits_uint8 = n_new <= 256 and 0 <= ignore_index <= 255
    out = np.full(arr.shape, ignore_index, dtype=np.uint8 if fits_uint8 else np.int32)
    width = arr.shape[1]
    centre = (width - 1) / 2.0
    band = center_margin * width
    for class_id in present.tolist():
        in_class = arr == class_id
        if class_id in keep_whole:
            out[in_class] = 2 * class_id
            continue
        regions, n_regions = ndimage.label(in_class)
        if n_regions == 0:
            continue
        index = np.arange(1, n_regions + 1)
        areas = ndimage.sum_labels(in_class, regions, index)
        centroid_cols = np.array([c[1] for c in ndimage.center_of_mass(in_class, regions, index)])
        offset = centroid_cols - centre
        keep = (areas >= min_area) & (np.abs(offset) > band)
        new_id = np.full(n_regions + 1, ignore_index, dtype=np.int64)
        new_id[1:][keep] = 2 * class_id + np.where(offset[keep] < 0, LEFT, RIGHT)
        out[in_class] = new_id[regions[in_class]]
    names = spatial_semantic_names(class_names, keep_whole)
    return SpatialSemanticLabels(mask=out, class_names=names, n_classes=n_new)

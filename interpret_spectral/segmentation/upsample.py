"""Upsampling token-grid label maps to image size (nearest neighbour).

Examples
--------
>>> import numpy as np
>>> upsample_labels(np.array([[0, 1]]), (2, 4)).tolist()
[[0, 0, 1, 1], [0, 0, 1, 1]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["upsample_labels"]


def _size_pair(size: Any) -> tuple[int, int] | None:
    """``(H, W)`` if ``size`` is one pair of positive ints, else None."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return None
    try:
        values = list(size)
    except TypeError:
        return None
    if len(values) == 2 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        if min(values) < 1:
            raise ValueError(f"size must be positive, got {tuple(values)}")
        return int(values[0]), int(values[1])
    return None


def _nearest_index(source: int, target: int) -> np.ndarray:
    """Source cell of every target pixel: the cell containing the pixel centre."""
    return np.minimum(((np.arange(target) + 0.5) * source / target).astype(np.int64), source - 1)


def upsample_labels(
    labels: xr.DataArray | np.ndarray, size: tuple[int, int] | Sequence[tuple[int, int]]
) -> xr.DataArray | np.ndarray | list[np.ndarray]:
    """Upsample token-grid label maps to image size by nearest neighbour.

    Pixel ``(i, j)`` of an ``H x W`` image takes the label of the grid cell holding its
    centre: row ``floor((i + 0.5) * h / H)``, column ``floor((j + 0.5) * w / W)``
    (what the patch grid of an image resized to the model's input covers).

    Parameters
    ----------
    labels : xarray.DataArray or numpy.ndarray
        Label maps with the grid as the last two dimensions (``y``, ``x`` for a
        DataArray), e.g. ``(sample, y, x)`` or ``(h, w)``.
    size : (int, int) or sequence of (int, int)
        One ``(H, W)`` for all maps, or one per sample (first dimension of ``labels``).

    Returns
    -------
    xarray.DataArray, numpy.ndarray or list of numpy.ndarray
        For one size: the same type as ``labels`` with the last two dimensions of
        length ``H``, ``W`` (a DataArray keeps its other coordinates and attrs).  For
        one size per sample: a list of ``(H_i, W_i)`` arrays.

    Examples
    --------
    >>> import numpy as np
    >>> upsample_labels(np.array([[0, 1], [2, 3]]), (3, 4)).tolist()
    [[0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    """
    is_dataarray = isinstance(labels, xr.DataArray)
    if is_dataarray:
        if labels.dims[-2:] != ("y", "x"):
            raise ValueError(f"labels must end with dims (y, x), got {labels.dims}; transpose it first")
        array = labels.values
    else:
        array = np.asarray(labels)
    if array.ndim < 2:
        raise ValueError(f"labels must have at least 2 dimensions (h, w), got shape {array.shape}")
    height, width = array.shape[-2:]
    pair = _size_pair(size)
    if pair is not None:
        rows, cols = _nearest_index(height, pair[0]), _nearest_index(width, pair[1])
        out = array[..., rows[:, None], cols[None, :]]
        if not is_dataarray:
            return out
        coords = {name: c for name, c in labels.coords.items() if not {"y", "x"} & set(c.dims)}
        return xr.DataArray(out, dims=labels.dims, coords=coords, attrs=dict(labels.attrs), name=labels.name)
    sizes = [_size_pair(s) for s in size]
    if any(s is None for s in sizes):
        raise ValueError(f"size must be one (H, W) pair of ints or a sequence of such pairs, got {size!r}")
    if array.ndim != 3 or len(sizes) != array.shape[0]:
        raise ValueError(
            f"{len(sizes)} sizes for labels of shape {array.shape}: give one (H, W) per map of a (sample, y, x) stack"
        )
    return [
        array[i][_nearest_index(height, h)[:, None], _nearest_index(width, w)[None, :]]
        for i, (h, w) in enumerate(sizes)  # type: ignore[misc]
    ]


"""Resampling matrices between token grids: ``G`` takes a map on the output grid to a site's grid.

``"bilinear"`` is the paper's resampling, ``"area"`` the authors' code's (adaptive
average pooling); both equal :func:`torch.nn.functional.interpolate` exactly.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import scipy.sparse as sparse

__all__ = ["RESAMPLE_METHODS", "as_grid", "check_resample_method", "resampling_factors", "resampling_matrix", "resample_1d"]

ResampleMethod = Literal["bilinear", "area"]
RESAMPLE_METHODS: tuple[str, ...] = ("bilinear", "area")


def as_grid(value: Any, what: str = "grid") -> tuple[int, int]:
    """``(h, w)`` from an int or a pair of positive ints, or a clear error.

    Examples
    --------
    >>> as_grid(4), as_grid((2, 3))
    ((4, 4), (2, 3))
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be an int or a (height, width) pair of ints, got {value!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive, got {(h, w)}")
    return h, w


def check_resample_method(method: str) -> None:
    """Raise a clear error unless ``method`` is one of :data:`RESAMPLE_METHODS`.

    Examples
    --------
    >>> check_resample_method("area")
    """
    if method not in RESAMPLE_METHODS:
        raise ValueError(f"resampling method must be one of {RESAMPLE_METHODS}, got {method!r}")


def resample_1d(n_in: int, n_out: int, method: str, antialias: bool = False) -> np.ndarray:
    """The ``(n_out, n_in)`` matrix of 1-D resampling as ``torch.nn.functional.interpolate`` does it.

    ``"bilinear"``: linear interpolation with ``align_corners=False`` (source coordinate
    ``(i + 0.5) * n_in / n_out - 0.5``, clamped at 0); with ``antialias`` and
    ``n_in > n_out`` a triangle filter whose support grows with the factor (torch's
    ``antialias=True``).  ``"area"``: adaptive average pooling (output ``i`` averages
    inputs ``floor(i n_in / n_out)`` to ``ceil((i + 1) n_in / n_out) - 1``), also when
    upsampling.

    Examples
    --------
    >>> resample_1d(4, 2, "area").tolist()
    [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]
    """
    matrix = np.zeros((n_out, n_in))
    scale = n_in / n_out
    if method == "area":
        for i in range(n_out):
            start = (i * n_in) // n_out
            stop = -((-(i + 1) * n_in) // n_out)
            matrix[i, start:stop] = 1.0 / (stop - start)
    elif antialias and scale > 1:
        for i in range(n_out):
            center = scale * (i + 0.5)
            start = max(int(center - scale + 0.5), 0)
            stop = min(int(center + scale + 0.5), n_in)
            taps = np.arange(start, stop)
            weights = np.clip(1.0 - np.abs((taps - center + 0.5) / scale), 0.0, None)
            matrix[i, start:stop] = weights / weights.sum()
    else:
        for i in range(n_out):
            src = max(scale * (i + 0.5) - 0.5, 0.0)
            i0 = min(int(src), n_in - 1)
            i1 = i0 + 1 if i0 < n_in - 1 else i0
            frac = src - i0
            matrix[i, i0] += 1.0 - frac
            matrix[i, i1] += frac
    return matrix


def resampling_factors(
    out_grid: tuple[int, int] | int,
    site_grid: tuple[int, int] | int,
    method: ResampleMethod = "bilinear",
    antialias: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The separable factors ``(R_y, R_x)`` of :func:`resampling_matrix` (same arguments).

    ``G = kron(R_y, R_x)``: ``R_y`` is ``(site_h, out_h)`` and ``R_x`` is
    ``(site_w, out_w)``, so a map ``X`` of shape ``(out_h, out_w)`` resamples to
    ``R_y @ X @ R_x.T``.

    Examples
    --------
    >>> ry, rx = resampling_factors((4, 4), (2, 2), "area")
    >>> ry.tolist()
    [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]
    """
    check_resample_method(method)
    if antialias and method != "bilinear":
        raise ValueError("antialias applies to method='bilinear' only (as in torch.nn.functional.interpolate)")
    out_h, out_w = as_grid(out_grid, "out_grid")
    site_h, site_w = as_grid(site_grid, "site_grid")
    return resample_1d(out_h, site_h, method, antialias), resample_1d(out_w, site_w, method, antialias)


def resampling_matrix(
    out_grid: tuple[int, int] | int,
    site_grid: tuple[int, int] | int,
    method: ResampleMethod = "bilinear",
    antialias: bool = False,
) -> sparse.csr_matrix:
    """The sparse matrix ``G`` with ``x_site = G @ x_out`` for row-major flattened maps.

    Parameters
    ----------
    out_grid : (int, int) or int
        Grid ``(h, w)`` of the map being resampled (the decomposition's output grid).
    site_grid : (int, int) or int
        Grid of the attention site the map is taken to.
    method : {"bilinear", "area"}
        ``"bilinear"`` equals ``F.interpolate(x, site_grid, mode="bilinear",
        align_corners=False)`` (no antialiasing, also when downsampling: the paper);
        ``"area"`` equals ``F.interpolate(x, site_grid, mode="area")``, i.e. adaptive
        average pooling, also when upsampling (the authors' code).
    antialias : bool
        ``"bilinear"`` only: ``F.interpolate(..., antialias=True)``, a triangle filter
        as wide as the downsampling factor (no change when upsampling).

    Returns
    -------
    scipy.sparse.csr_matrix
        Shape ``(site_h * site_w, out_h * out_w)``.

    Examples
    --------
    >>> import numpy as np
    >>> g = resampling_matrix((4, 4), (2, 2), "area")
    >>> (g @ np.arange(16.0)).tolist()
    [2.5, 4.5, 10.5, 12.5]
    """
    ry, rx = resampling_factors(out_grid, site_grid, method, antialias)
    return sparse.kron(sparse.csr_matrix(ry), sparse.csr_matrix(rx), format="csr")

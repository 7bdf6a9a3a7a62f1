"""Linear probes on per-location features: how much "where" a representation holds.

:func:`coordinate_regression` is the probe of the paper's appendix C.3 (Table 5): a
linear regression from the features at a grid location to that location's
``(x, y)`` position, scored by held-out mean squared error in grid cells squared.
Features that encode position well give a low error; features that carry no
position give about the variance of a uniform grid coordinate, ``(grid**2 - 1) / 12``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import xarray as xr
from sklearn.linear_model import LinearRegression

from interpret_spectral.store.decomposition import as_vectors

__all__ = ["CoordinateRegressionResult", "coordinate_regression"]

@dataclasses.dataclass(frozen=True, eq=False)
class CoordinateRegressionResult:
    """Held-out error of a linear (x, y) position probe.

    Attributes
    ----------
    mse : float
        Mean of ``mse_x`` and ``mse_y``, in grid cells squared.
    mse_x, mse_y : float
        Held-out mean squared error of the column (x) and row (y) prediction.
    model : sklearn.linear_model.LinearRegression
        The fitted regression; ``model.predict`` maps (n, component) features to
        (n, 2) positions ordered ``(x, y)``.
    grid : int
        Side of the square grid the features were resampled to.
    n_train, n_test : int
        Number of (sample, location) rows fitted and scored.
    """

    mse: float
    mse_x: float
    mse_y: float
    model: LinearRegression
    grid: int
    n_train: int
    n_test: int


def _vector_array(vectors: Any) -> np.ndarray:
    """(sample, y, x, component) numpy array: a decomposition or DataArray read by ``as_vectors``, or an array."""
    if isinstance(vectors, (xr.Dataset, xr.DataArray)):
        vectors = as_vectors(vectors).values
    arr = np.asarray(vectors)
    if arr.ndim != 4:
        raise ValueError(
            f"vectors must be 4-D (sample, y, x, component), got shape {arr.shape}; "
            "add a sample axis for a single image (arr[None])."
        )
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"vectors must be real numbers, got dtype {arr.dtype}.")
    if min(arr.shape) == 0:
        raise ValueError(f"vectors has an empty axis: shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError("vectors contains NaN or infinite values.")
    return arr


def _resample(arr: np.ndarray, grid: int) -> np.ndarray:
    """Bilinear resize of (S, H, W, C) to (S, grid, grid, C), align_corners=False."""
    tensor = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64)).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(tensor, size=(grid, grid), mode="bilinear",
                                              align_corners=False)
    return resized.permute(0, 2, 3, 1).numpy()


def coordinate_regression(vectors: Any, grid: int = 32, train_fraction: float = 0.8,
                          seed: int = 0) -> CoordinateRegressionResult:
    """Linear probe from per-location features to grid position (paper C.3, Table 5).

    The features are resampled bilinearly to ``grid x grid``
    (``torch.nn.functional.interpolate``, ``align_corners=False``).  Every
    (sample, row, column) becomes one row with target ``(x, y) = (column, row)`` in
    grid cells, ``0 .. grid-1``.  The rows of all samples are pooled and split at
    random: ``train_fraction`` of them fit a :class:`sklearn.linear_model.LinearRegression`
    (with intercept), the rest are scored.

    Parameters
    ----------
    vectors : xarray.Dataset, xarray.DataArray or array_like
        A decomposition (read by :func:`interpret_spectral.store.decomposition.as_vectors`),
        features with dims ``(sample, y, x, component)`` in any order, or a numpy
        array of shape (S, H, W, C).
    grid : int
        Side of the square grid the features are resampled to.
    train_fraction : float
        Fraction of (sample, location) rows used to fit, in (0, 1).
    seed : int
        Seed of the random split.

    Returns
    -------
    CoordinateRegressionResult
        ``mse`` is the held-out squared error in grid cells squared, averaged over
        the two coordinates.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij")
    >>> feats = np.stack([xx, yy], axis=-1)[None]          # (1, 8, 8, 2)
    >>> round(coordinate_regression(feats, grid=8).mse, 6)
    0.0
    """
    if int(grid) != grid or grid < 2:
        raise ValueError(f"grid must be an integer >= 2, got {grid}.")
    grid = int(grid)
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie strictly between 0 and 1, got {train_fraction}.")
    arr = _vector_array(vectors)
    n_samples, n_components = arr.shape[0], arr.shape[3]
    features = _resample(arr, grid).reshape(-1, n_components)
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64),
                             np.arange(grid, dtype=np.float64), indexing="ij")
    targets = np.tile(np.stack([cols.ravel(), rows.ravel()], axis=1), (n_samples, 1))

    n_rows = features.shape[0]
    n_train = int(round(train_fraction * n_rows))
    if n_train < 1 or n_train >= n_rows:
        raise ValueError(
            f"train_fraction={train_fraction} of {n_rows} rows leaves an empty train or "
            "test set; use more samples, a larger grid or another fraction."
        )
    order = np.random.default_rng(seed).permutation(n_rows)
    train, test = order[:n_train], order[n_train:]
    model = LinearRegression().fit(features[train], targets[train])
    squared_error = (model.predict(features[test]) - targets[test]) ** 2
    mse_x, mse_y = (float(v) for v in squared_error.mean(axis=0))
    return CoordinateRegressionResult(
        mse=(mse_x + mse_y) / 2.0, mse_x=mse_x, mse_y=mse_y, model=model, grid=grid,
        n_train=int(train.size), n_test=int(test.size),
    )

"""Coordinate-regression probe: exact on coordinates, chance level on noise."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from interpret_spectral.evaluation.regression import coordinate_regression


def _coordinate_features(n_samples: int, size: int) -> np.ndarray:
    """(S, size, size, 2) features equal to (x, y) in cells of a 32-cell grid."""
    centres = (np.arange(size) + 0.5) * 32 / size - 0.5
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    return np.broadcast_to(np.stack([xx, yy], axis=-1), (n_samples, size, size, 2)).copy()


@pytest.mark.parametrize("size", [32, 64])
def test_coordinates_give_zero_error(size: int) -> None:
    # at the grid size and at twice it (bilinear 2x downsampling is exactly linear)
    result = coordinate_regression(_coordinate_features(2, size), grid=32)
    assert result.mse < 1e-12
    np.testing.assert_allclose(result.model.coef_, np.eye(2), atol=1e-9)


def test_upsampled_coordinates_give_small_error() -> None:
    # 16 -> 32 clamps the outermost half cell, so the fit is close but not exact
    result = coordinate_regression(_coordinate_features(2, 16), grid=32)
    assert 0 < result.mse < 0.05


def test_random_features_give_coordinate_variance() -> None:
    grid = 32
    rng = np.random.default_rng(1)
    result = coordinate_regression(rng.normal(size=(8, grid, grid, 4)), grid=grid)
    variance = (grid**2 - 1) / 12  # 85.25
    assert result.mse == pytest.approx(variance, rel=0.08)
    assert result.n_train == round(0.8 * 8 * grid * grid)
    assert result.n_train + result.n_test == 8 * grid * grid


def test_x_and_y_are_scored_separately() -> None:
    feats = _coordinate_features(2, 32)[..., :1]  # only x
    result = coordinate_regression(feats, grid=32)
    assert result.mse_x < 1e-12
    assert result.mse_y == pytest.approx((32**2 - 1) / 12, rel=0.1)
    assert result.mse == pytest.approx((result.mse_x + result.mse_y) / 2)


def test_dataarray_in_any_dim_order_and_seed() -> None:
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(3, 8, 8, 5)) + _coordinate_features(3, 8)[..., :1]
    da = xr.DataArray(arr, dims=("sample", "y", "x", "component"))
    from_numpy = coordinate_regression(arr, grid=16, seed=3)
    from_xarray = coordinate_regression(da.transpose("component", "x", "sample", "y"),
                                        grid=16, seed=3)
    assert from_xarray.mse == from_numpy.mse
    assert coordinate_regression(arr, grid=16, seed=4).mse != from_numpy.mse


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="dims"):
        bad_dims = xr.DataArray(np.zeros((2, 4, 4, 3)), dims=("a", "y", "x", "component"))
        coordinate_regression(bad_dims)
    with pytest.raises(ValueError, match="4-D"):
        coordinate_regression(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        coordinate_regression(np.full((1, 4, 4, 2), np.nan))
    with pytest.raises(ValueError, match="train_fraction"):
        coordinate_regression(np.zeros((1, 4, 4, 2)), train_fraction=1.0)
    with pytest.raises(ValueError, match="grid"):
        coordinate_regression(np.zeros((1, 4, 4, 2)), grid=1)


def test_a_decomposition_is_read_through_the_one_reader() -> None:
    from interpret_spectral.store.decomposition import DecompositionError, make_decomposition

    features = _coordinate_features(2, 32)
    decomposition = make_decomposition(features, np.ones((2, 2)), ["a", "b"], producer="test")
    assert coordinate_regression(decomposition, grid=32).mse < 1e-12
    with pytest.raises(DecompositionError, match="format"):
        coordinate_regression(decomposition.assign_attrs(format="other"))

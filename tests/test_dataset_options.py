"""decompose_dataset's options from the authors' code: resolution weights, a random timestep per image,
a moving average of the maps; each changes what it should on a planted store."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from interpret_spectral.spectral.dataset import decompose_dataset
from interpret_spectral.spectral.dataset_options import draw_timesteps
from interpret_spectral.spectral.site_graphs import NonFiniteError
from interpret_spectral.synthetic import planted_store

EXACT = dict(graph="qk", n_components=3, intra=4, inter=2, grid=8, solver="exact", progress=False)
ADAM = dict(graph="qk", n_components=3, intra=4, inter=2, grid=8, batch_size=3, steps_per_batch=3, epochs=2,
            progress=False)


def _angle(a, b) -> float:
    a, b = (np.asarray(x["vectors"].values).reshape(-1, 3) for x in (a, b))
    return float(np.degrees(subspace_angles(a, b).max()))


def test_weight_by_resolution_leans_to_the_fine_site() -> None:
    # two sites with different planted groups: the 8x8 site (64 tokens) and the 4x4 one (16 tokens)
    both = planted_store(n_samples=3, grids=((8, 8), (4, 4)), n_groups=3, seed=1)
    other = planted_store(n_samples=3, grids=((8, 8), (4, 4)), n_groups=2, seed=2)
    fine_site, coarse_site = list(both.children)
    for var in ("q", "k"):  # the coarse site gets other groups
        both[coarse_site][var] = both[coarse_site][var].copy(data=other[coarse_site][var].values)
    fine_only = decompose_dataset(both, **EXACT, layers=[fine_site])
    equal = decompose_dataset(both, **EXACT)
    weighted = decompose_dataset(both, **EXACT, weight_by_resolution=True)
    assert weighted.attrs["weight_by_resolution"] == 1 and equal.attrs["weight_by_resolution"] == 0
    # weights 1.6 / 0.4 instead of 1 / 1: the solution moves towards the fine site's own
    assert _angle(weighted, fine_only) < _angle(equal, fine_only) - 1.0


def test_random_timestep_reads_one_timestep_per_image() -> None:
    store = planted_store(n_samples=4, grids=((8, 8), (4, 4)), timesteps=(10, 200, 400), seed=0)
    chosen = draw_timesteps(4, 3, seed=5)
    assert len(set(chosen.tolist())) > 1, "the seed must give images different timesteps"
    for site in store.children:
        for var in ("q", "k"):
            values = store[site][var].values.copy()  # (sample, timestep, head, token, channel)
            for sample in range(4):
                values[sample, np.arange(3) != chosen[sample]] = np.nan  # only the drawn timestep is usable
            store[site][var] = store[site][var].copy(data=values)
    with pytest.raises(NonFiniteError):
        decompose_dataset(store, **EXACT, seed=5)  # every timestep is a graph: the NaN ones too
    result = decompose_dataset(store, **EXACT, seed=5, random_timestep=True)
    assert np.isfinite(result["vectors"].values).all()
    assert result.attrs["random_timestep"] == 1
    assert "t=random per image" in result.attrs["sites"]


def test_random_timestep_needs_timesteps() -> None:
    with pytest.raises(ValueError, match="timestep dimension"):
        decompose_dataset(planted_store(n_samples=3), **EXACT, random_timestep=True)


def test_moving_average_of_the_maps() -> None:
    store = planted_store(n_samples=3, grids=((8, 8), (4, 4)), seed=0)
    last = decompose_dataset(store, **ADAM)
    same = decompose_dataset(store, **ADAM, moving_average=0.0)  # decay 0: the average is the last maps
    np.testing.assert_allclose(same["vectors"].values, last["vectors"].values, atol=1e-6)
    averaged = decompose_dataset(store, **ADAM, moving_average=0.9)
    assert averaged.attrs["moving_average"] == 0.9
    assert not np.allclose(averaged["vectors"].values, last["vectors"].values, atol=1e-3)
    with pytest.raises(ValueError, match="moving_average"):
        decompose_dataset(store, **EXACT, moving_average=0.9)
    with pytest.raises(ValueError, match="decay"):
        decompose_dataset(store, **ADAM, moving_average=1.0)

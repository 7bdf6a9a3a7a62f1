"""decompose() and site_contributions() on stores with planted structure (interpret_spectral.spectral)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from scipy.linalg import subspace_angles
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from interpret_spectral.spectral.decompose import decompose, sample_operator, site_contributions
from interpret_spectral.store.selection import select_layers
from interpret_spectral.synthetic import LABELS_VARIABLE, planted_labels, planted_store

GRIDS = ((16, 16), (8, 8), (4, 4))


@pytest.fixture(scope="module")
def store() -> xr.DataTree:
    return planted_store(n_samples=3, grids=GRIDS, num_heads=2, n_groups=4, seed=7)


def _ari(decomposition: xr.Dataset, truth: np.ndarray, k: int) -> list[float]:
    scores = []
    for i in range(decomposition.sizes["sample"]):
        rows = decomposition["vectors"].isel(sample=i).values.reshape(-1, decomposition.sizes["component"])
        labels = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(rows)
        scores.append(adjusted_rand_score(truth[i].ravel(), labels))
    return scores


@pytest.mark.parametrize("resample", ["bilinear", "area"])
def test_planted_groups_are_recovered(store, resample):
    result = decompose(store, n_components=4, resample=resample, progress=False)
    scores = _ari(result, store[LABELS_VARIABLE].values, 4)
    print(f"exact, {resample}: adjusted Rand index per sample {np.round(scores, 3).tolist()}")
    assert min(scores) >= 0.95


def test_planted_groups_are_recovered_by_adam_and_vv():
    small = planted_store(n_samples=1, grids=((8, 8), (4, 4)), num_heads=2, n_groups=3, seed=3)
    truth = small[LABELS_VARIABLE].values
    assert min(_ari(decompose(small, "vv", n_components=3, progress=False), truth, 3)) >= 0.95
    adam = decompose(small, n_components=3, solver="adam", progress=False)
    assert min(_ari(adam, truth, 3)) >= 0.95
    assert adam.attrs["precision"] == "float32" and adam["iterations"].values.tolist() == [1000]


def test_output_layout_and_attributes(store):
    result = decompose(store, n_components=5, progress=False, layers=[0, "blocks.2.attn"], seed=3)
    assert result["vectors"].dims == ("sample", "y", "x", "component")
    assert result["vectors"].shape == (3, 16, 16, 5)
    assert result["values"].dims == ("sample", "component")
    assert result["sample"].values.tolist() == ["planted-0", "planted-1", "planted-2"]
    for name in ("objective", "loss", "iterations", "seconds"):
        assert result[name].dims == ("sample",)
    attrs = result.attrs
    assert attrs["graph"] == "qk" and attrs["solver"] == "exact" and attrs["method"] == "eigh"
    assert json.loads(attrs["layers"]) == ["blocks.0.attn", "blocks.2.attn"]
    assert attrs["n_graphs"] == 4 and attrs["seed"] == 3 and list(attrs["grid"]) == [16, 16]
    assert attrs["heads"] == "each" and attrs["resample"] == "bilinear"
    assert json.loads(attrs["solver_options"])["method"] == "eigh"
    assert np.all(np.isnan(result["loss"].values)) and np.all(result["seconds"].values > 0)
    for i in range(3):
        x = result["vectors"].isel(sample=i).values.reshape(256, 5)
        np.testing.assert_allclose(x.T @ x, np.eye(5), atol=1e-10)
        m = sample_operator(store, i, layers=[0, 2]).dense()
        np.testing.assert_allclose(np.diag(x.T @ m @ x), result["values"].isel(sample=i).values, atol=1e-10)
        assert np.all(np.diff(result["values"].isel(sample=i).values) <= 0)
        np.testing.assert_allclose(result["objective"].values[i], result["values"].values[i].sum())


def test_float32_attention_agrees_with_float64(store):
    single = decompose(store, n_components=4, progress=False, samples=[0])
    double = decompose(store, n_components=4, progress=False, samples=[0], precision="float64")
    assert single.attrs["precision"] == "float32" and double.attrs["precision"] == "float64"
    angle = subspace_angles(single["vectors"].values.reshape(256, 4), double["vectors"].values.reshape(256, 4))
    assert angle.max() < 1e-5
    np.testing.assert_allclose(single["values"].values, double["values"].values, atol=1e-6)


def test_on_disk_and_in_memory_stores_give_identical_results(tmp_path):
    path = tmp_path / "planted.h5"
    on_disk = planted_store(n_samples=2, grids=((8, 8), (4, 4)), n_groups=3, seed=11, path=path)
    in_memory = planted_store(n_samples=2, grids=((8, 8), (4, 4)), n_groups=3, seed=11)
    np.testing.assert_array_equal(on_disk[LABELS_VARIABLE].values, in_memory[LABELS_VARIABLE].values)
    from_disk = decompose(path, n_components=3, progress=False)
    from_tree = decompose(on_disk, n_components=3, progress=False)
    from_memory = decompose(in_memory, n_components=3, progress=False)
    xr.testing.assert_identical(from_disk.drop_vars("seconds"), from_memory.drop_vars("seconds"))
    xr.testing.assert_identical(from_tree.drop_vars("seconds"), from_memory.drop_vars("seconds"))
    on_disk.close()


def test_identical_seeds_give_identical_results(store):
    options = {"n_components": 3, "progress": False, "samples": [0]}
    for solver, extra in (("exact", {"method": "lobpcg"}), ("adam", {"steps": 25})):
        first = decompose(store, solver=solver, seed=4, **options, **extra)
        second = decompose(store, solver=solver, seed=4, **options, **extra)
        xr.testing.assert_identical(first.drop_vars("seconds"), second.drop_vars("seconds"))
    other = decompose(store, solver="adam", seed=5, steps=25, **options)
    assert not np.allclose(other["vectors"].values, first["vectors"].values)


def test_special_tokens_are_left_out(store):
    """Changing the CLS token's q/k changes nothing: graphs are over patch tokens only."""
    changed = store.copy(deep=True)
    for name in select_layers(store):
        node = changed[name].to_dataset()
        for var in ("q", "k"):
            node[var].values[:, :, 0, :] = 100.0
        changed[name] = xr.DataTree(node)
    a = decompose(store, n_components=3, progress=False, samples=[1])
    b = decompose(changed, n_components=3, progress=False, samples=["planted-1"])
    xr.testing.assert_identical(a.drop_vars("seconds"), b.drop_vars("seconds"))


def test_zero_weight_equals_leaving_the_site_out(store):
    weighted = decompose(store, n_components=4, progress=False, samples=[0],
                         weights={"blocks.1.attn": 0.0, "blocks.2.attn": [2.0, 2.0]})
    subset = decompose(store, n_components=4, progress=False, samples=[0], layers=[0, 2],
                       weights=[1.0, 2.0])
    np.testing.assert_allclose(weighted["values"].values, subset["values"].values, atol=1e-12)
    angle = subspace_angles(weighted["vectors"].values.reshape(256, 4), subset["vectors"].values.reshape(256, 4))
    assert angle.max() < 1e-8
    with pytest.raises(KeyError, match="not chosen"):
        decompose(store, progress=False, layers=[0], weights={"blocks.1.attn": 1.0})
    with pytest.raises(ValueError, match="one weight per chosen site"):
        decompose(store, progress=False, weights=[1.0, 2.0])


def test_grid_heads_and_layer_selection(store):
    coarse = decompose(store, n_components=3, progress=False, grid=8, heads="concat", samples=[0])
    assert coarse["vectors"].shape == (1, 8, 8, 3) and coarse.attrs["n_graphs"] == 3
    assert select_layers(store, "blocks.[12]*") == ["blocks.1.attn", "blocks.2.attn"]
    assert select_layers(store, [-1, 0]) == ["blocks.0.attn", "blocks.2.attn"]
    only_coarse = decompose(store, n_components=2, progress=False, layers=-1, samples=[0])
    assert only_coarse["vectors"].shape == (1, 4, 4, 2)  # default grid: the finest chosen site
    with pytest.raises(IndexError, match="out of range"):
        select_layers(store, 5)
    with pytest.raises(KeyError, match="no site"):
        select_layers(store, "decoder*")


def test_timesteps_are_selected_by_value():
    store = planted_store(n_samples=1, grids=((6, 6), (3, 3)), n_groups=2, timesteps=[100, 500])
    both = decompose(store, n_components=2, progress=False)
    assert both.attrs["n_graphs"] == 8 and json.loads(both.attrs["timesteps"]) == [100, 500]
    late = decompose(store, n_components=2, progress=False, timesteps=500)
    assert late.attrs["n_graphs"] == 4
    with pytest.raises(KeyError, match="recorded"):
        decompose(store, progress=False, timesteps=[7])
    no_time = planted_store(n_samples=1, grids=((4, 4),), n_groups=2)
    with pytest.raises(ValueError, match="no timestep"):
        decompose(no_time, progress=False, timesteps=[0])


def test_bad_arguments_raise_clear_errors(store):
    with pytest.raises(ValueError, match="graph must be"):
        decompose(store, graph="kv", progress=False)
    with pytest.raises(ValueError, match="solver must be"):
        decompose(store, solver="no-such-solver", progress=False)
    with pytest.raises(ValueError, match="precision"):
        decompose(store, progress=False, precision="float16")
    with pytest.raises(TypeError, match="options of solver"):
        decompose(store, progress=False, samples=[0], steps=10)
    with pytest.raises(KeyError, match="not in the store"):
        decompose(store, progress=False, samples=["nope"])
    with pytest.raises(TypeError, match="DataTree"):
        decompose(np.zeros(3), progress=False)


def test_site_contributions_average_to_the_values(store):
    result = decompose(store, n_components=3, progress=False, layers=[0, 1], samples=[0, 2])
    contributions = site_contributions(store, result)
    assert contributions["contribution"].dims == ("sample", "site", "head", "component")
    assert contributions["used"].values.tolist() == [True, True, False]
    used = contributions["contribution"].sel(site=["blocks.0.attn", "blocks.1.attn"])
    np.testing.assert_allclose(used.mean(("site", "head")).values, result["values"].values, atol=1e-10)
    # the coarsest site, not used, still agrees with the planted groups the solution found
    assert float(contributions["contribution"].sel(site="blocks.2.attn").isel(component=0).min()) > 0.5


def test_planted_labels_are_nested_across_grids():
    store = planted_store(n_samples=1, grids=((12, 12), (3, 3)), n_groups=3, seed=2)
    fine = store[LABELS_VARIABLE].values[0]
    blocks = fine.reshape(3, 4, 3, 4).transpose(0, 2, 1, 3).reshape(9, 16)
    assert all(len(np.unique(block)) == 1 for block in blocks)
    assert planted_labels(np.array([[0.1, 0.1], [0.9, 0.9]]), (2, 2)).tolist() == [[0, 0], [0, 1]]


def test_incomplete_store_is_refused_unless_allowed():
    from interpret_spectral.spectral.dataset import decompose_dataset
    from interpret_spectral.store import StoreError
    from interpret_spectral.synthetic import planted_store

    store = planted_store(n_samples=2)
    store.attrs["samples_requested"] = 6  # as a probe of 6 images that stopped after 2 leaves it
    with pytest.raises(StoreError, match="2 of 6 samples"):
        decompose(store, progress=False)
    with pytest.raises(StoreError, match="resume"):
        decompose_dataset(store, solver="exact", grid=4, progress=False)
    result = decompose(store, progress=False, allow_incomplete=True)
    assert result.sizes["sample"] == 2


def test_a_store_without_samples_is_refused(tmp_path):
    from interpret_spectral.store import StoreError, create_store
    from interpret_spectral.store.sites import AttentionSite

    site = AttentionSite("blocks.0.attn", "blocks.0.attn", 0, 2, 4, 0.5, (2, 2), ("cls",) + ("patch",) * 4)
    create_store([site], path=tmp_path / "e.h5").close()
    with pytest.raises(StoreError, match="holds no samples"):
        decompose(tmp_path / "e.h5", progress=False)


def test_decompose_returns_the_contributions_site_contributions_computes():
    """return_contributions: bitwise the same decomposition and contributions, the graphs computed once."""
    store = planted_store(n_samples=2)
    plain = decompose(store, n_components=3, progress=False)
    both, contributions = decompose(store, n_components=3, progress=False, return_contributions=True)
    np.testing.assert_array_equal(both["vectors"].values, plain["vectors"].values)
    np.testing.assert_array_equal(both["values"].values, plain["values"].values)
    reference = site_contributions(store, plain)
    assert contributions["contribution"].dims == reference["contribution"].dims
    np.testing.assert_array_equal(contributions["contribution"].values, reference["contribution"].values)
    assert contributions["used"].values.all()

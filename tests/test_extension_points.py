"""Extension points of the spectral engine, and what it refuses before computing.

A graph kind ("kk", key-key cosine) and a solver (block power iteration), each defined
and registered in one file outside the package (``tests/plugins/``), run through
``decompose``, ``decompose_dataset`` and the CLI with no change to the package; the
same files load through a real entry point.  Then the integrity side (issue 11):
non-finite attention, absurd grids and attributes, memory estimates.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from scipy.linalg import subspace_angles
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

import interpret_spectral.spectral.kinds as kinds
import interpret_spectral.spectral.limits as limits
import interpret_spectral.spectral.solvers as solvers
from interpret_spectral import decompose, decompose_dataset, site_contributions
from interpret_spectral.spectral import (
    NonFiniteError, available_graph_kinds, available_solvers, get_graph_kind, get_solver, register_graph_kind,
)
from interpret_spectral.store.format import StoreError
from interpret_spectral.synthetic import LABELS_VARIABLE, planted_store

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture(scope="module")
def plugins():
    sys.path.insert(0, str(PLUGINS))
    try:
        yield importlib.import_module("kk_graph"), importlib.import_module("toy_solver")
    finally:
        sys.path.remove(str(PLUGINS))


@pytest.fixture(scope="module")
def store():
    return planted_store(n_samples=2, grids=((8, 8), (4, 4)), num_heads=2, n_groups=3, seed=3)


def _with_values_from_keys(tree: xr.DataTree) -> xr.DataTree:
    """A copy whose ``v`` is ``k``: its "vv" graph is the "kk" graph of ``tree``."""
    copy = tree.copy(deep=True)
    for name in copy.children:
        node = copy[name].to_dataset()
        node["v"] = node["k"].copy()
        copy[name] = xr.DataTree(node)
    return copy


def _ari(result: xr.Dataset, truth: np.ndarray) -> float:
    k = result.sizes["component"]
    scores = []
    for i in range(result.sizes["sample"]):
        rows = result["vectors"].isel(sample=i).values.reshape(-1, k)
        scores.append(adjusted_rand_score(truth[i].ravel(), KMeans(k, n_init=10, random_state=0).fit_predict(rows)))
    return min(scores)


# -- a graph kind from outside --------------------------------------------------------------
def test_plugin_graph_kind_is_registered_from_its_own_file(plugins):
    kk_module, _ = plugins
    assert "kk" in available_graph_kinds() and get_graph_kind("kk") is kk_module.KK
    assert get_graph_kind(kk_module.KK) is kk_module.KK  # an object is accepted as it is
    assert get_graph_kind(kk_module.KeyKeyCosine).name == "kk"  # and a factory
    with pytest.raises(ValueError, match="already registered"):
        register_graph_kind(type("Other", (kk_module.KeyKeyCosine,), {})())
    with pytest.raises(ValueError, match=r"graph must be one of .*'kk'"):
        get_graph_kind("kq")
    with pytest.raises(TypeError, match="GraphKind"):
        get_graph_kind(42)


def test_plugin_graph_kind_runs_decompose(plugins, store):
    kk = decompose(store, "kk", n_components=3, progress=False)
    assert kk.attrs["graph"] == "kk" and kk.attrs["producer"] == "decompose"
    assert _ari(kk, store[LABELS_VARIABLE].values) >= 0.95
    # the same numbers as the built-in cosine graph on values that are the keys
    reference = decompose(_with_values_from_keys(store), "vv", n_components=3, progress=False)
    np.testing.assert_allclose(kk["vectors"].values, reference["vectors"].values, atol=1e-12)
    contributions = site_contributions(store, kk)  # the kind resolves again from the result's attributes
    np.testing.assert_allclose(contributions["contribution"].mean(("site", "head")).values, kk["values"].values,
                               atol=1e-10)
    adam = decompose(store, plugins[0].KK, n_components=3, solver="adam", steps=300, progress=False)
    assert _ari(adam, store[LABELS_VARIABLE].values) >= 0.95


@pytest.mark.parametrize("solver", ["exact", "adam"])
def test_plugin_graph_kind_runs_decompose_dataset(plugins, store, solver):
    options = dict(n_components=3, intra=5, inter=5, grid=8, solver=solver, epochs=3, batch_size=2,
                   progress=False)
    kk = decompose_dataset(store, graph="kk", **options)
    reference = decompose_dataset(_with_values_from_keys(store), graph="vv", **options)
    assert kk.attrs["graph"] == "kk" and kk.attrs["producer"] == "decompose_dataset"
    np.testing.assert_allclose(kk["vectors"].values, reference["vectors"].values, atol=1e-6)
    flat = kk["vectors"].values.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(flat.T @ flat, np.eye(3), atol=1e-5)


# -- a solver from outside --------------------------------------------------------------------
def test_plugin_solver_runs_decompose(plugins, store):
    assert "power" in available_solvers() and get_solver("power") is plugins[1].POWER
    exact = decompose(store, "qk", n_components=3, progress=False)
    power = decompose(store, "qk", n_components=3, solver="power", progress=False)
    assert power.attrs["solver"] == "power" and power.attrs["method"] == "power"
    for i in range(2):
        a = exact["vectors"].isel(sample=i).values.reshape(-1, 3)
        b = power["vectors"].isel(sample=i).values.reshape(-1, 3)
        assert subspace_angles(a, b).max() < 1e-6
    np.testing.assert_allclose(power["values"].values, exact["values"].values, atol=1e-9)
    with pytest.raises(TypeError, match="options of solver='power'"):
        decompose(store, n_components=3, solver="power", steps=3, progress=False)


def test_plugin_solver_runs_decompose_dataset(plugins, store):
    options = dict(graph="qk", n_components=3, intra=5, inter=5, grid=8, progress=False)
    exact = decompose_dataset(store, solver="exact", **options)
    power = decompose_dataset(store, solver=plugins[1].PowerIteration, **options)  # a factory is accepted
    assert power.attrs["solver"] == "power"
    angles = subspace_angles(exact["vectors"].values.reshape(-1, 3), power["vectors"].values.reshape(-1, 3))
    assert angles.max() < 1e-4
    with pytest.raises(ValueError, match="solver='adam' only"):
        decompose_dataset(store, solver="power", checkpoint="state.npz", **options)


def test_plugins_load_through_entry_points(plugins, tmp_path, monkeypatch):
    """A package that declares the entry points (a real dist-info on sys.path) is found by name."""
    info = tmp_path / "kk_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kk-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[interpret_spectral.graph_kinds]\nkk-ep = kk_graph:KeyKeyCosine\n\n"
        "[interpret_spectral.solvers]\npower-ep = toy_solver:PowerIteration\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PLUGINS))
    try:
        kinds._REGISTRY.reload_entry_points()
        solvers._REGISTRY.reload_entry_points()
        assert "kk-ep" in available_graph_kinds() and "power-ep" in available_solvers()
        result = decompose(planted_store(n_samples=1, grids=((4, 4),), n_groups=2), "kk-ep", n_components=2,
                           solver="power-ep", progress=False)
        assert result.attrs["graph"] == "kk-ep" and result.attrs["solver"] == "power-ep"
    finally:
        kinds._REGISTRY.unregister("kk-ep")
        solvers._REGISTRY.unregister("power-ep")


# -- Eq. 8 ------------------------------------------------------------------------------------
def test_adam_ends_with_eq8_rotation_unless_whitened(store):
    rotated = decompose(store, n_components=3, solver="adam", steps=50, samples=[0], progress=False)
    whitened = decompose(store, n_components=3, solver="adam", steps=50, samples=[0], progress=False,
                         orthogonalize="whiten")
    x = rotated["vectors"].values.reshape(-1, 3)
    w = whitened["vectors"].values.reshape(-1, 3)
    gram = x.T @ x
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-8)  # orthogonal columns ...
    assert np.all(np.diff(np.diag(gram)) <= 0) and not np.allclose(np.diag(gram), 1.0)  # ... of norms sqrt(lambda)
    np.testing.assert_allclose(w.T @ w, np.eye(3), atol=1e-10)
    assert subspace_angles(x, w).max() < 1e-8  # one span
    with pytest.raises(ValueError, match="orthogonalize"):
        decompose(store, n_components=3, solver="adam", steps=5, progress=False, orthogonalize="polar")


# -- refused before computing (issue 11) -----------------------------------------------------------
def _poisoned(tree: xr.DataTree, site: str, var: str, sample: int) -> xr.DataTree:
    copy = tree.copy(deep=True)
    node = copy[site].to_dataset()
    node[var].values[sample, 0, 3, 0] = np.nan
    copy[site] = xr.DataTree(node)
    return copy


def test_non_finite_attention_is_refused_naming_site_and_sample(store):
    bad = _poisoned(store, "blocks.1.attn", "q", 1)
    for solver in ("exact", "adam"):
        with pytest.raises(NonFiniteError, match=r"site 'blocks.1.attn'.*sample 'planted-1'"):
            decompose(bad, n_components=3, solver=solver, samples=["planted-1"], progress=False)
    decompose(bad, n_components=3, samples=[0], progress=False)  # the clean sample still decomposes
    bad_v = _poisoned(store, "blocks.0.attn", "v", 0)
    for solver in ("exact", "adam"):
        with pytest.raises(NonFiniteError, match=r"site 'blocks.0.attn'.*samples \['planted-0'\]"):
            decompose_dataset(bad_v, graph="vv", n_components=3, grid=8, solver=solver, batch_size=2,
                              progress=False)


def test_absurd_grid_fails_fast(store, tmp_path):
    tiny = planted_store(n_samples=1, grids=((4, 4),), n_groups=2)
    for grid in (1000, 10**6):
        start = time.perf_counter()
        with pytest.raises(ValueError, match=r"finer than the finest chosen site \(4, 4\)"):
            decompose(tiny, grid=grid, progress=False)
        with pytest.raises(ValueError, match="finer than the finest"):
            decompose_dataset(tiny, grid=grid, inter=0, progress=False)
        assert time.perf_counter() - start < 5.0
    assert decompose(tiny, grid=64, n_components=2, progress=False, method="lobpcg")["vectors"].shape == (1, 64, 64, 2)


def test_absurd_attributes_are_refused_before_allocating(store):
    result = decompose(store, n_components=3, progress=False)
    heads = store.copy(deep=True)
    heads["blocks.0.attn"].attrs["num_heads"] = 10**9
    with pytest.raises(StoreError, match=r"num_heads=1000000000.* 2 heads"):
        site_contributions(heads, result)
    grid = store.copy(deep=True)
    grid["blocks.1.attn"].attrs["grid_h"] = 10**6
    with pytest.raises(StoreError, match="holds 16 patch tokens"):
        decompose(grid, progress=False)


def test_requests_over_the_memory_are_refused_with_an_estimate(store, monkeypatch):
    monkeypatch.setattr(limits, "available_memory", lambda: 10**6)
    with pytest.raises(MemoryError, match=r"decompose .*would need about .* more than the 976.6 KiB"):
        decompose(store, progress=False)
    monkeypatch.setattr(limits, "available_memory", lambda: 10**4)
    with pytest.raises(MemoryError, match="decompose_dataset"):
        decompose_dataset(store, grid=8, progress=False)


# -- the CLI -------------------------------------------------------------------------------------
def test_cli_decompose_with_a_plugin_graph_kind(plugins, tmp_path):
    """Depends on the CLI resolving --graph through available_graph_kinds()."""
    from interpret_spectral.cli import main

    path = tmp_path / "planted.h5"
    planted_store(n_samples=1, grids=((8, 8), (4, 4)), n_groups=3, path=path).close()
    out = tmp_path / "kk.nc"
    try:
        code = main(["decompose", str(path), "--graph", "kk", "--out", str(out)])
    except SystemExit as stop:
        code = stop.code
    assert code in (0, None) and out.exists()

"""Eigen-solvers (interpret_spectral.spectral.solvers, .adam): exact against a dense reference, Adam against exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

from interpret_spectral.spectral.adam import solve_adam
from interpret_spectral.spectral.decompose import sample_operator
from interpret_spectral.spectral.finish import fix_signs, orthogonalize, rayleigh_ritz
from interpret_spectral.spectral.kinds import qk_affinity, vv_affinity
from interpret_spectral.spectral.operator import LayerDistributedOperator
from interpret_spectral.spectral.site_graphs import SiteGraphs
from interpret_spectral.spectral.solvers import solve, solve_exact
from interpret_spectral.synthetic import planted_store


def test_orthogonalize_is_eq8_a_rotation():
    """Eq. 8 as the paper writes it: X U, U the eigenvectors of X^T X (descending)."""
    x = np.array([[3.0, 1.0], [1.0, 3.0], [0.0, 0.0], [2.0, -2.0]])
    lam, v = np.linalg.eigh(x.T @ x)  # X^T X = [[14, 2], [2, 14]]: lambda 16 and 12
    order = np.argsort(-lam)
    expected = x @ v[:, order]
    got = orthogonalize(x)
    np.testing.assert_allclose(np.abs(np.sum(got * expected, axis=0)), np.sum(expected**2, axis=0), atol=1e-12)
    np.testing.assert_allclose(np.abs(got), np.abs(expected), atol=1e-12)  # X U, column signs aside
    np.testing.assert_allclose(got.T @ got, np.diag(lam[order]), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(x, axis=1), atol=1e-12)


def test_orthogonalize_whiten_is_x_u_lambda_inverse_sqrt():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)) @ np.diag([5.0, 4.0, 3.0, 2.0, 1.0])
    u = orthogonalize(x, whiten=True)
    np.testing.assert_allclose(u.T @ u, np.eye(5), atol=1e-12)
    lam, v = np.linalg.eigh(x.T @ x)  # Eq. 8: X V diag(lambda)^-1/2, by descending lambda
    order = np.argsort(-lam)
    eq8 = x @ v[:, order] / np.sqrt(lam[order])
    np.testing.assert_allclose(np.abs(np.sum(u * eq8, axis=0)), 1.0, atol=1e-10)  # same columns up to sign
    assert subspace_angles(u, x).max() < 1e-10


def test_orthogonalize_rank_deficient_and_errors():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 3))
    x = np.concatenate([x, x[:, :1]], axis=1)  # a repeated column (a collapsed softmax map)
    u = orthogonalize(x, whiten=True)
    np.testing.assert_allclose(u.T @ u, np.eye(4), atol=1e-12)
    with pytest.raises(ValueError, match="fewer components"):
        orthogonalize(np.ones((2, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        orthogonalize(np.full((4, 2), np.nan))


def test_fix_signs_makes_largest_entry_positive_and_is_idempotent():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 6))
    fixed = fix_signs(x)
    pivot = np.argmax(np.abs(x), axis=0)
    assert np.all(fixed[pivot, np.arange(6)] > 0)
    np.testing.assert_array_equal(np.abs(fixed), np.abs(x))
    np.testing.assert_array_equal(fix_signs(-x), fixed)
    np.testing.assert_array_equal(fix_signs(fixed), fixed)


def test_rayleigh_ritz_recovers_eigenvectors_inside_the_span():
    rng = np.random.default_rng(3)
    m = rng.normal(size=(12, 12))
    m = m + m.T
    w, v = np.linalg.eigh(m)
    top = v[:, -3:]
    mixed, _ = np.linalg.qr(top @ rng.normal(size=(3, 3)))
    vectors, values = rayleigh_ritz(mixed, m @ mixed)
    np.testing.assert_allclose(values, w[::-1][:3], atol=1e-12)
    np.testing.assert_allclose(np.abs(np.sum(vectors * top[:, ::-1], axis=0)), 1.0, atol=1e-12)


def _random_problem(seed: int = 4):
    """Multi-resolution graphs on a 10x10 output grid, and the explicit M from dense P and dense G."""
    rng = np.random.default_rng(seed)
    out_grid = (10, 10)
    graphs, m = [], np.zeros((100, 100))
    for grid, kind in [((10, 10), "qk"), ((5, 5), "qk"), ((4, 3), "vv"), ((3, 3), "qk")]:
        n = grid[0] * grid[1]
        q, k = rng.normal(size=(2, 3, n, 6))
        if kind == "qk":
            graphs.append(SiteGraphs.from_tokens("qk", grid=grid, q=q, k=k, scale=0.6))
            p = qk_affinity(q, k, 0.6)
        else:
            graphs.append(SiteGraphs.from_tokens("vv", grid=grid, v=q))
            p = vv_affinity(q)
        graphs[-1].chunk_bytes = 3 * n * 8 * 4  # several row chunks per site
        op_g = LayerDistributedOperator(graphs[-1:], out_grid).resampling_matrix(grid).toarray()
        for p_head in p:
            m += (100 / n) * op_g.T @ (0.5 * (p_head + p_head.T)) @ op_g
    return LayerDistributedOperator(graphs, out_grid), m / 12


@pytest.mark.parametrize("method", ["eigh", "torch", "lanczos", "lobpcg"])
def test_exact_equals_dense_reference(method):
    op, m = _random_problem()
    w, v = np.linalg.eigh(m)
    k = 6
    assert w[-k] - w[-k - 1] > 1e-3  # a well-defined top-k subspace
    solution = solve_exact(op, k, method=method)
    assert solution.method == method
    angle = subspace_angles(solution.vectors, v[:, -k:]).max()
    assert angle < 1e-6, f"{method}: largest principal angle {angle:.2e}"
    np.testing.assert_allclose(solution.values, w[::-1][:k], atol=1e-8)
    np.testing.assert_allclose(solution.vectors.T @ solution.vectors, np.eye(k), atol=1e-10)
    np.testing.assert_allclose(np.diag(solution.vectors.T @ m @ solution.vectors), solution.values, atol=1e-8)
    for column, reference in zip(solution.vectors.T, v[:, ::-1][:, :k].T):  # each eigenvector, up to sign
        assert abs(abs(column @ reference) - 1.0) < 1e-6
    assert np.all(np.diff(solution.values) <= 0)
    assert solution.objective == pytest.approx(w[-k:].sum())


def test_exact_auto_picks_by_size():
    op, _ = _random_problem()
    assert solve_exact(op, 3).method == "eigh"
    assert solve_exact(op, 3, dense_threshold=50).method == "lanczos"
    assert solve_exact(op, 3, dense_threshold=50, max_dense_bytes=1000).method == "lobpcg"


def test_exact_auto_solves_on_the_operators_device():
    """An operator on a GPU is solved there (method "torch"); its M is never copied to the host."""
    op, m = _random_problem()

    class OnAccelerator:  # the operator as decompose(device="cuda") builds it, seen from the solver
        size, dtype, device = op.size, op.dtype, torch.device("cuda")

        def dense_tensor(self):
            return op.dense_tensor()

        def dense(self):
            raise AssertionError("the explicit M was copied to the host")

    solution = solve_exact(OnAccelerator(), 4)
    assert solution.method == "torch"
    w, v = np.linalg.eigh(m)
    assert subspace_angles(solution.vectors, v[:, -4:]).max() < 1e-6


def test_exact_top_vector_is_near_constant_and_kept():
    """Every P is row-stochastic, so M's top eigenvector is close to the constant map; it is kept."""
    op, _ = _random_problem()
    top = solve_exact(op, 3).vectors[:, 0]
    assert abs(top @ np.full(100, 0.1)) > 0.9


def test_exact_rejects_bad_input():
    op, _ = _random_problem()
    with pytest.raises(ValueError, match="exceeds"):
        solve_exact(op, 101)
    with pytest.raises(ValueError, match="method"):
        solve_exact(op, 3, method="arpack")
    with pytest.raises(ValueError, match="solver"):
        solve(op, 3, "sgd")
    with pytest.raises(ValueError, match="positive integer"):
        solve_exact(op, 0)


@pytest.fixture(scope="module")
def planted_operator():
    store = planted_store(n_samples=1, grids=((8, 8), (4, 4)), n_groups=3, num_heads=2, seed=0)
    return sample_operator(store, 0, dtype=torch.float32)


def test_adam_defaults_land_near_exact(planted_operator):
    exact = solve_exact(planted_operator, 3)
    adam = solve_adam(planted_operator, 3)
    assert adam.iterations == 1000 and adam.options["parametrization"] == "softmax"
    angle = np.degrees(subspace_angles(adam.vectors, exact.vectors).max())
    print(f"adam (defaults) vs exact on the planted problem: largest principal angle {angle:.2f} deg")
    # Eq. 4 targets x^T P x = 1 while exact maximises past 1 (sym(P) can exceed 1): a few degrees apart.
    assert angle < 15.0
    assert adam.loss < 0.05
    assert adam.objective > 0.95 * exact.objective


def test_adam_is_seeded_and_deterministic(planted_operator):
    first = solve_adam(planted_operator, 3, steps=30, seed=5)
    second = solve_adam(planted_operator, 3, steps=30, seed=5)
    other = solve_adam(planted_operator, 3, steps=30, seed=6)
    np.testing.assert_array_equal(first.vectors, second.vectors)
    assert first.loss == second.loss
    assert not np.allclose(first.vectors, other.vectors)


def test_adam_from_exact_starts_at_the_exact_solution(planted_operator):
    exact = solve_exact(planted_operator, 3)
    stay = solve_adam(planted_operator, 3, init="exact", parametrization="free", steps=3, lr=1e-9)
    assert subspace_angles(stay.vectors, exact.vectors).max() < 1e-4
    warm = solve_adam(planted_operator, 3, init="exact")
    assert warm.iterations == 100 and warm.options["exact_method"] == "eigh"
    assert np.degrees(subspace_angles(warm.vectors, exact.vectors).max()) < 15.0


def test_adam_accumulate_sums_gradients(planted_operator):
    """On one timestep the gradients repeat: accumulating 2 equals one step (Adam ignores the scale)."""
    unit = {"parametrization": "free", "orthogonalize": "whiten"}  # unit columns: rounding on one scale
    once = solve_adam(planted_operator, 3, steps=10, accumulate=1, **unit)
    twice = solve_adam(planted_operator, 3, steps=20, accumulate=2, **unit)
    more = solve_adam(planted_operator, 3, steps=20, accumulate=1, **unit)
    assert np.abs(once.vectors - twice.vectors).max() < 2e-4  # float32 rounding only
    assert np.abs(once.vectors - more.vectors).max() > 1e-2


def test_adam_draws_one_timestep_per_step(monkeypatch):
    store = planted_store(n_samples=1, grids=((6, 6), (3, 3)), n_groups=2, timesteps=[10, 500, 900])
    op = sample_operator(store, 0, dtype=torch.float32)
    assert {g.timestep for g in op.graphs} == {0, 1, 2}
    drawn: list[set] = []
    original = LayerDistributedOperator.eq4_terms

    def spy(self, graphs, x):
        drawn.append({g.timestep for g in graphs})
        return original(self, graphs, x)

    monkeypatch.setattr(LayerDistributedOperator, "eq4_terms", spy)
    solve_adam(op, 2, steps=40, seed=1)
    steps = drawn[:40]
    assert all(len(d) == 1 for d in steps)  # one timestep per loss evaluation
    assert {next(iter(d)) for d in steps} == {0, 1, 2}
    first = [next(iter(d)) for d in steps]
    drawn.clear()
    solve_adam(op, 2, steps=40, seed=1)
    assert [next(iter(d)) for d in drawn[:40]] == first


def test_adam_rejects_bad_options(planted_operator):
    with pytest.raises(ValueError, match="parametrization"):
        solve_adam(planted_operator, 3, parametrization="sigmoid")
    with pytest.raises(ValueError, match="steps"):
        solve_adam(planted_operator, 3, steps=0)
    with pytest.raises(ValueError, match="lr"):
        solve_adam(planted_operator, 3, lr=-1.0)
    with pytest.raises(ValueError, match="init"):
        solve_adam(planted_operator, 3, init="kmeans")
    with pytest.raises(TypeError):
        solve(planted_operator, 3, "adam", method="eigh")

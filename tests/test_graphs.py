"""Affinity graphs, resampling matrices and the operator M (interpret_spectral.spectral)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch
import torch.nn.functional as F

from interpret_spectral.spectral.kinds import qk_affinity, vv_affinity
from interpret_spectral.spectral.operator import LayerDistributedOperator, _symmetrize_
from interpret_spectral.spectral.resample import resampling_matrix
from interpret_spectral.spectral.site_graphs import SiteGraphs

GRID_PAIRS = [
    ((8, 8), (4, 4)),  # 2x down
    ((16, 16), (4, 4)),  # 4x down
    ((64, 64), (8, 8)),  # 8x down (SD-like)
    ((37, 37), (16, 16)),  # non-integer down (DINOv2 grid to a 16 grid)
    ((7, 5), (3, 4)),  # non-square, mixed
    ((4, 4), (8, 8)),  # up
    ((5, 3), (9, 7)),  # non-integer up
    ((6, 6), (6, 6)),  # identity
]


def _interpolate(x: np.ndarray, size: tuple[int, int], mode: str, antialias: bool = False) -> np.ndarray:
    kwargs = {"align_corners": False, "antialias": antialias} if mode == "bilinear" else {}
    return F.interpolate(torch.from_numpy(x)[None], size=size, mode=mode, **kwargs)[0].numpy()


@pytest.mark.parametrize("out_grid,site_grid", GRID_PAIRS)
@pytest.mark.parametrize("method,antialias", [("bilinear", False), ("bilinear", True), ("area", False)])
def test_resampling_matrix_equals_interpolate(out_grid, site_grid, method, antialias):
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, *out_grid))
    g = resampling_matrix(out_grid, site_grid, method, antialias=antialias)
    assert isinstance(g, scipy.sparse.csr_matrix)
    assert g.shape == (site_grid[0] * site_grid[1], out_grid[0] * out_grid[1])
    got = (g @ maps.reshape(3, -1).T).T.reshape(3, *site_grid)
    expected = _interpolate(maps, site_grid, method, antialias)
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_resampling_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="method"):
        resampling_matrix((4, 4), (2, 2), "bicubic")
    with pytest.raises(ValueError, match="positive"):
        resampling_matrix((4, 0), (2, 2))
    with pytest.raises(ValueError, match="antialias"):
        resampling_matrix((4, 4), (2, 2), "area", antialias=True)
    with pytest.raises(TypeError, match="pair"):
        resampling_matrix("4x4", (2, 2))


def test_qk_affinity_is_the_row_softmax_and_stable():
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=(2, 3, 10, 4)) * 30.0  # logits in the thousands: a naive exp overflows
    p = qk_affinity(q, k, 0.5)
    assert isinstance(p, np.ndarray) and p.shape == (3, 10, 10)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-12)
    logits = 0.5 * q @ k.transpose(0, 2, 1)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(p, expected / expected.sum(-1, keepdims=True), atol=1e-12)
    assert isinstance(qk_affinity(torch.from_numpy(q), torch.from_numpy(k), 0.5), torch.Tensor)


def test_vv_affinity_is_clamped_cosine_row_normalised():
    v = np.array([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.1], [0.0, 0.0]])
    p = vv_affinity(v)
    unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    a = np.clip(unit @ unit.T, 0.0, None)
    np.fill_diagonal(a, 1.0)  # the zero vector stays a fixed point
    np.testing.assert_allclose(p, a / a.sum(1, keepdims=True), atol=1e-12)
    assert p[0, 2] == 0.0 and p[3, 3] == 1.0


@pytest.mark.parametrize("kind", ["qk", "vv"])
def test_site_graphs_chunked_products_equal_dense(kind):
    rng = np.random.default_rng(2)
    q, k, v = rng.normal(size=(3, 3, 20, 5))
    tokens = {"q": q, "k": k} if kind == "qk" else {"v": v}
    # chunk_bytes small enough for rows of 2: ten chunks
    graphs = SiteGraphs.from_tokens(kind, grid=(4, 5), scale=0.7, chunk_bytes=3 * 20 * 8 * 2, **tokens)
    p = qk_affinity(q, k, 0.7) if kind == "qk" else vv_affinity(v)
    np.testing.assert_allclose(graphs.dense().numpy(), p, atol=1e-12)
    sym = 0.5 * (p + p.transpose(0, 2, 1))
    y = rng.normal(size=(20, 4))
    np.testing.assert_allclose(graphs.sym_matmul(torch.from_numpy(y)).numpy(), sym @ y, atol=1e-12)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    weighted = np.einsum("g,gij->ij", w.numpy(), sym)
    np.testing.assert_allclose(graphs.weighted_sym_matmul(torch.from_numpy(y), w).numpy(), weighted @ y, atol=1e-12)
    np.testing.assert_allclose(graphs.weighted_dense(w).numpy(), np.einsum("g,gij->ij", w.numpy(), p), atol=1e-12)
    assert graphs.materialize(2**20) and graphs.materialized
    np.testing.assert_allclose(graphs.sym_matmul(torch.from_numpy(y)).numpy(), sym @ y, atol=1e-12)


def test_concat_heads_sum_the_logits_for_qk_and_concatenate_values_for_vv():
    rng = np.random.default_rng(3)
    q, k, v = rng.normal(size=(3, 2, 9, 4))
    concat = SiteGraphs.from_tokens("qk", grid=3, q=q, k=k, scale=0.5, heads="concat")
    assert concat.num_graphs == 1
    logits = 0.5 * (q @ k.transpose(0, 2, 1)).sum(0)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(concat.dense()[0].numpy(), expected / expected.sum(1, keepdims=True), atol=1e-12)
    concat_v = SiteGraphs.from_tokens("vv", grid=3, v=v, heads="concat")
    np.testing.assert_allclose(concat_v.dense()[0].numpy(), vv_affinity(np.concatenate(list(v), axis=1)), atol=1e-12)


def test_site_graphs_reject_bad_input():
    q = np.zeros((2, 9, 4))
    with pytest.raises(ValueError, match="row-major"):
        SiteGraphs.from_tokens("qk", grid=(2, 2), q=q, k=q, scale=1.0)
    with pytest.raises(ValueError, match="scale"):
        SiteGraphs.from_tokens("qk", grid=3, q=q, k=q)
    with pytest.raises(ValueError, match="needs 'k'"):
        SiteGraphs.from_tokens("qk", grid=3, q=q, scale=1.0)
    with pytest.raises(ValueError, match="one per graph"):
        SiteGraphs.from_tokens("vv", grid=3, v=q, weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-negative"):
        SiteGraphs.from_tokens("vv", grid=3, v=q, weights=-1.0)
    with pytest.raises(ValueError, match="graph must be"):
        SiteGraphs.from_tokens("kq", grid=3, q=q, k=q, scale=1.0)


def _reference_m(sites, out_grid, method):
    """Explicit M from dense P and dense G, in numpy only (the operator's documented formula)."""
    n_out = out_grid[0] * out_grid[1]
    m = np.zeros((n_out, n_out))
    total = sum(weights.sum() for *_, weights in sites)
    for grid, p, weights in sites:
        n = grid[0] * grid[1]
        antialias = [method == "bilinear" and a > 2 * b for a, b in zip(out_grid, grid)]
        ry = resampling_matrix((out_grid[0], 1), (grid[0], 1), method, antialias=antialias[0]).toarray()
        rx = resampling_matrix((1, out_grid[1]), (1, grid[1]), method, antialias=antialias[1]).toarray()
        g = np.kron(ry, rx)
        for w, p_head in zip(weights, p):
            m += (w / total) * (n_out / n) * g.T @ (0.5 * (p_head + p_head.T)) @ g
    return m


@pytest.mark.parametrize("method", ["bilinear", "area"])
def test_operator_equals_explicit_reference_multiresolution(method):
    rng = np.random.default_rng(4)
    out_grid = (12, 12)
    specs = [((12, 12), "qk", np.array([1.0, 2.0])), ((6, 6), "vv", np.array([0.5, 0.5])),
             ((3, 3), "qk", np.array([1.0, 1.0])), ((5, 7), "qk", np.array([3.0, 0.0]))]
    graphs, sites = [], []
    for grid, kind, weights in specs:
        n = grid[0] * grid[1]
        q, k = rng.normal(size=(2, 2, n, 4))
        if kind == "qk":
            graphs.append(SiteGraphs.from_tokens("qk", grid=grid, q=q, k=k, scale=0.5, weights=weights))
            sites.append((grid, qk_affinity(q, k, 0.5), weights))
        else:
            graphs.append(SiteGraphs.from_tokens("vv", grid=grid, v=q, weights=weights))
            sites.append((grid, vv_affinity(q), weights))
    op = LayerDistributedOperator(graphs, out_grid, method)
    reference = _reference_m(sites, out_grid, method)
    np.testing.assert_allclose(op.dense(), reference, atol=1e-12)
    x = rng.normal(size=(144, 3))
    np.testing.assert_allclose(op.matmat(x).numpy(), reference @ x, atol=1e-12)
    basis, _ = np.linalg.qr(x)
    quotients = op.rayleigh_quotients(basis)
    weights = [g.weights.numpy() / op.total_weight for g in graphs]
    combined = sum((w[:, None] * r.numpy()).sum(0) for w, r in zip(weights, quotients))
    np.testing.assert_allclose(combined, np.diag(basis.T @ reference @ basis), atol=1e-12)
    assert op.num_graphs == 8 and op.size == 144


@pytest.mark.parametrize("out_grid,site_grid", GRID_PAIRS[:5])
def test_operator_resampling_never_amplifies(out_grid, site_grid):
    """sqrt(N/n) G keeps constant maps and has operator norm ~1 (bilinear > 2x uses antialiasing).

    Plain bilinear downsampling by f > 2 reads 2 of every f pixels: its scaled norm is f/2,
    and a map living on those pixels would gain (f/2)^2 in the quadratic form.
    """
    n_out, n = out_grid[0] * out_grid[1], site_grid[0] * site_grid[1]
    graph = SiteGraphs.from_tokens("vv", grid=site_grid, v=np.ones((1, n, 2)))
    op = LayerDistributedOperator([graph], out_grid, "bilinear")
    g = np.sqrt(n_out / n) * op.resampling_matrix(site_grid).toarray()
    np.testing.assert_allclose(np.linalg.norm(g @ np.ones(n_out)), np.sqrt(n_out), rtol=1e-12)
    assert _spectral_norm(g) < 1.05
    plain = np.sqrt(n_out / n) * resampling_matrix(out_grid, site_grid, "bilinear").toarray()
    factor = max(a / b for a, b in zip(out_grid, site_grid))
    if factor <= 2:
        np.testing.assert_array_equal(g, plain)
    else:
        assert _spectral_norm(plain) > 1.5


def _spectral_norm(g: np.ndarray) -> float:
    small = g @ g.T if g.shape[0] <= g.shape[1] else g.T @ g
    return float(np.sqrt(np.linalg.eigvalsh(small).max()))


def test_operator_rejects_zero_weights_and_empty():
    graph = SiteGraphs.from_tokens("vv", grid=2, v=np.ones((1, 4, 2)), weights=0.0)
    with pytest.raises(ValueError, match="sum to zero"):
        LayerDistributedOperator([graph], 2)
    with pytest.raises(ValueError, match="at least one"):
        LayerDistributedOperator([], 2)


def test_blockwise_symmetrisation():
    m = torch.from_numpy(np.random.default_rng(5).normal(size=(11, 11)))
    expected = 0.5 * (m + m.T)
    _symmetrize_(m, block=3)
    np.testing.assert_allclose(m.numpy(), expected.numpy(), atol=1e-15)


def test_dense_m_over_several_column_blocks_matches_matmat():
    """An output grid above the 512-column block of dense() (576 tokens), a coarse site resampled."""
    rng = np.random.default_rng(6)
    fine = SiteGraphs.from_tokens("vv", grid=(24, 24), v=rng.normal(size=(1, 576, 4)))
    q, k = rng.normal(size=(2, 2, 36, 4))
    coarse = SiteGraphs.from_tokens("qk", grid=(6, 6), q=q, k=k, scale=1.0)
    op = LayerDistributedOperator([fine, coarse], (24, 24), "bilinear")
    m = op.dense()
    np.testing.assert_allclose(m, m.T, atol=1e-15)
    x = rng.normal(size=(576, 3))
    np.testing.assert_allclose(m @ x, op.matmat(x).numpy(), atol=1e-12)

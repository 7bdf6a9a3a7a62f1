"""Approximate cross-image neighbours (FAISS) against brute force: recall@k and the dataset decomposition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interpret_spectral.spectral import decompose_dataset
from interpret_spectral.spectral.topk import intra_inter_topk
from interpret_spectral.synthetic import planted_store

pytest.importorskip("faiss", reason="faiss-cpu (the scale extra) is not installed")


def _planted_features(n_images: int, tokens: int, width: int, groups: int, seed: int = 0) -> torch.Tensor:
    """Unit features: every token near one of ``groups`` shared directions (objects recurring across images)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, width))
    labels = rng.integers(0, groups, size=n_images * tokens)
    x = centres[labels] + 0.9 * rng.normal(size=(n_images * tokens, width))
    return torch.nn.functional.normalize(torch.from_numpy(x.astype(np.float32)), dim=1)


def test_approximate_inter_neighbours_recall_at_k_against_brute_force() -> None:
    x = _planted_features(n_images=120, tokens=64, width=96, groups=12)
    exact_v, exact_i = intra_inter_topk(x, x, 64, intra=5, inter=10, neighbours="exact")
    approx_v, approx_i = intra_inter_topk(x, x, 64, intra=5, inter=10, neighbours="approximate")
    # intra neighbours are exact on both paths
    assert torch.equal(exact_i[:, :5], approx_i[:, :5])
    # no approximate inter neighbour lies in the token's own image
    own = torch.arange(x.shape[0]) // 64
    assert not (approx_i[:, 5:] // 64 == own[:, None]).any()
    recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(exact_i[:, 5:], approx_i[:, 5:])])
    assert recall >= 0.95, recall
    # the similarities found are the true ones of those pairs
    true = (x[:, None, :] * x[approx_i[:, 5:]]).sum(-1)
    assert torch.allclose(true, approx_v[:, 5:], atol=1e-4)


def test_auto_switches_to_approximate_past_the_limit() -> None:
    x = _planted_features(n_images=40, tokens=32, width=16, groups=4, seed=1)
    exact = intra_inter_topk(x, x, 32, intra=3, inter=4)
    forced = intra_inter_topk(x, x, 32, intra=3, inter=4, neighbours="auto", exact_limit=100, nprobe=10**6)
    # every inverted list probed: the approximate search is exhaustive, so it finds the exact neighbours
    assert torch.allclose(exact[0], forced[0], atol=1e-5)
    with pytest.raises(ValueError, match="neighbours must be one of"):
        intra_inter_topk(x, x, 32, intra=3, inter=4, neighbours="fast")


def test_decompose_dataset_approximate_agrees_with_exact_on_a_planted_store() -> None:
    store = planted_store(n_samples=16, grids=((8, 8), (4, 4)), n_groups=3, seed=3)
    runs = {
        method: decompose_dataset(store, graph="vv", n_components=4, intra=6, inter=6, grid=8, solver="exact",
                                  progress=False, neighbours=method)
        for method in ("exact", "approximate")
    }
    a = runs["exact"]["vectors"].values.reshape(-1, 4)
    b = runs["approximate"]["vectors"].values.reshape(-1, 4)
    np.testing.assert_allclose(runs["exact"]["values"].values, runs["approximate"]["values"].values, atol=1e-3)
    # the same subspace: every principal angle near zero
    cosines = np.linalg.svd(a.T.astype(np.float64) @ b.astype(np.float64), compute_uv=False)
    assert cosines.min() > 0.99, cosines

"""The grouped inverted-file search of cross-image neighbours against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("faiss", reason="the approximate search needs faiss-cpu (the scale extra)")

from interpret_spectral.spectral.ivf import grouped_ivf_topk  # noqa: E402


def _clustered(images: int, tokens: int, width: int, seed: int = 0) -> torch.Tensor:
    """Tokens near one of 20 directions (4 per image) plus isotropic noise, unit norm."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(20, width))
    objects = rng.integers(0, 20, size=(images, 4))
    labels = np.take_along_axis(objects, rng.integers(0, 4, size=(images, tokens)), axis=1).reshape(-1)
    x = directions[labels] + 0.6 * rng.normal(size=(images * tokens, width))
    return torch.nn.functional.normalize(torch.from_numpy(x).float(), dim=1)


def _exact(x: torch.Tensor, n: int, k: int) -> torch.Tensor:
    scores = x @ x.T
    image = torch.arange(x.shape[0]) // n
    scores.masked_fill_(image[:, None] == image[None, :], float("-inf"))
    return scores.topk(k, dim=1).indices


def test_recall_against_brute_force_and_own_image_excluded() -> None:
    n, k = 64, 10
    x = _clustered(80, n, 48)
    values, indices = grouped_ivf_topk(x, x, n, k)
    exact = _exact(x, n, k)
    recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(exact, indices)])
    assert recall >= 0.95, recall
    assert not bool(((indices // n) == (torch.arange(len(x)) // n)[:, None]).any())
    assert bool((values[:, :-1] >= values[:, 1:]).all())  # decreasing
    found = (x[:, None, :] * x[indices]).sum(-1)
    assert torch.allclose(found, values, atol=1e-5)  # the values are the similarities of the indices


def test_scanning_every_list_is_brute_force() -> None:
    n, k = 16, 5
    x = _clustered(12, n, 8, seed=3)
    values, indices = grouped_ivf_topk(x, x, n, k, lists=6, nprobe=6)
    exact_values = (x @ x.T).masked_fill_((torch.arange(len(x)) // n)[:, None] == (torch.arange(len(x)) // n)[None, :],
                                          float("-inf")).topk(k, dim=1).values
    assert torch.allclose(values, exact_values, atol=1e-6)


def test_bad_arguments_are_refused() -> None:
    x = torch.randn(20, 4)
    with pytest.raises(ValueError, match="whole images"):
        grouped_ivf_topk(x, x, 3, 2)
    with pytest.raises(ValueError, match="lists"):
        grouped_ivf_topk(x, x, 4, 2, lists=0)
    with pytest.raises(ValueError, match="nprobe"):
        grouped_ivf_topk(x, x, 4, 2, nprobe=0)

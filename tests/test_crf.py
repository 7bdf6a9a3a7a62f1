"""Dense CRF refinement (optional extra: pydensecrf2)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pydensecrf.densecrf", reason="the crf extra (pydensecrf2) is not installed")

from interpret_spectral.segmentation.crf import dense_crf  # noqa: E402


def _two_region_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image with a dark left half and a bright right half; noisy probabilities."""
    rng = np.random.default_rng(seed)
    height, width = 32, 48
    truth = np.zeros((height, width), np.int64)
    truth[:, width // 2:] = 1
    image = np.where(truth[..., None] == 1, 200, 40).astype(np.uint8).repeat(3, axis=2)
    p_correct = np.clip(rng.normal(0.65, 0.2, size=truth.shape), 0.01, 0.99)
    p1 = np.where(truth == 1, p_correct, 1 - p_correct)
    probs = np.stack([1 - p1, p1]).astype(np.float32)
    return image, probs, truth


def test_crf_cleans_noisy_probabilities_along_image_edges() -> None:
    image, probs, truth = _two_region_scene()
    noisy_accuracy = np.mean(probs.argmax(axis=0) == truth)
    refined = dense_crf(image, probs)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(axis=0), 1.0, atol=1e-4)
    assert noisy_accuracy < 0.85
    assert np.mean(refined.argmax(axis=0) == truth) > 0.99


def test_crf_upsamples_low_resolution_probabilities() -> None:
    image, _, truth = _two_region_scene()
    low = np.zeros((2, 8, 12), np.float32)
    low[0, :, :6], low[1, :, :6] = 0.8, 0.2
    low[0, :, 6:], low[1, :, 6:] = 0.2, 0.8
    refined = dense_crf(image, low)
    assert refined.shape == (2, 32, 48)
    assert np.mean(refined.argmax(axis=0) == truth) > 0.99


def test_crf_bad_input() -> None:
    image, probs, _ = _two_region_scene()
    with pytest.raises(ValueError, match="softmax"):
        dense_crf(image, probs * 2)
    with pytest.raises(ValueError, match=r"\(C, h, w\)"):
        dense_crf(image, probs[0])
    with pytest.raises(TypeError, match="uint8"):
        dense_crf(image.astype(np.float32), probs)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        dense_crf(image[..., 0], probs)

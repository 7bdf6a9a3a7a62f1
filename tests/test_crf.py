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


def test_crf_accepts_a_pil_image_and_its_read_only_array() -> None:
    from PIL import Image

    image, probs, truth = _two_region_scene()
    pil = Image.fromarray(image)
    read_only = np.asarray(pil)
    assert not read_only.flags.writeable
    for given in (pil, read_only, pil.convert("L").convert("RGB")):
        refined = dense_crf(given, probs)
        assert np.mean(refined.argmax(axis=0) == truth) > 0.99
    assert not read_only.flags.writeable  # the caller's array is left as it was


def _planted_scene_decomposition():
    """A 4 x 6 token grid over a 32 x 48 image whose colour edge (column 20) cuts token column 2 in half."""
    from interpret_spectral.store.decomposition import make_decomposition

    height, width = 32, 48
    truth = np.zeros((height, width), np.int64)
    truth[:, 20:] = 1
    image = np.where(truth[..., None] == 1, 200, 40).astype(np.uint8).repeat(3, axis=2)
    rng = np.random.default_rng(0)
    token_side = (np.arange(6) >= 2.5).astype(float)  # token column 2 (pixels 16..23) counts as left
    rows = np.stack([1 - token_side, token_side], axis=-1)[None].repeat(4, axis=0)
    rows = rows + 0.05 * rng.normal(size=rows.shape)
    decomposition = make_decomposition(rows[None], np.array([[1.0, 0.9]]), ["scene"], producer="test")
    return decomposition, image, truth


def test_segment_refines_with_the_crf_to_the_image_edges() -> None:
    from interpret_spectral.segmentation import segment, upsample_labels

    decomposition, image, truth = _planted_scene_decomposition()
    coarse = segment(decomposition, k=2)
    upsampled = upsample_labels(coarse, image.shape[:2]).values[0]
    refined = segment(decomposition, k=2, refine="crf", image=[image])
    assert refined.dims == ("sample", "y", "x") and refined.shape == (1, 32, 48)
    assert refined.attrs["refine"] == "crf" and refined.attrs["grid"] == [4, 6]
    assert refined["k"].values.tolist() == [2] and refined["sample"].values.tolist() == ["scene"]

    def accuracy(labels: np.ndarray) -> float:
        return max(np.mean(labels == truth), np.mean(labels == 1 - truth))

    assert accuracy(upsampled) == pytest.approx(44 / 48)  # the token grid puts the edge at column 24
    assert accuracy(refined.values[0]) > 0.99  # the CRF moves it to the colour edge at 20
    single = segment(decomposition["vectors"].isel(sample=0), k=2, refine="crf", image=image)
    assert single.dims == ("y", "x") and single.shape == (32, 48)
    with pytest.raises(ValueError, match="one image per sample"):
        segment(decomposition, k=2, refine="crf", image=[image, image])

"""Spatial-semantic (left / right) labels on synthetic masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from interpret_spectral.evaluation.spatial_semantic import spatial_semantic, spatial_semantic_names
from interpret_spectral.evaluation.metrics import matched_miou

NAMES = ["background", "car", "person"]
BG, CAR, PERSON = 0, 1, 2
H, W = 40, 100  # centre line at x = 49.5; the default 5% band is |cx - 49.5| <= 5


def _scene() -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[5:15, 5:21] = CAR          # 160 px, cx 12.5 -> car-left
    mask[25:35, 2:12] = CAR         # second car on the left, 100 px -> car-left
    mask[5:15, 70:91] = CAR         # 210 px, cx 80 -> car-right
    mask[20:36, 47:53] = PERSON     # 96 px, cx 49.5 (central) -> dropped
    mask[0:2, 95:97] = PERSON       # 4 px (small) -> dropped
    mask[20:36, 30:41] = PERSON     # 176 px, cx 35 -> person-left
    mask[36:40, 60:100] = 255       # ignored stays ignored
    return mask


def test_known_answer_with_background_kept_whole() -> None:
    mask = _scene()
    out = spatial_semantic(mask, NAMES, keep_whole=[BG])
    expected = np.where(mask == BG, 0, 255).astype(np.uint8)
    expected[5:15, 5:21] = 2 * CAR
    expected[25:35, 2:12] = 2 * CAR
    expected[5:15, 70:91] = 2 * CAR + 1
    expected[20:36, 30:41] = 2 * PERSON
    expected[20:36, 47:53] = 255
    expected[0:2, 95:97] = 255
    expected[36:40, 60:100] = 255
    np.testing.assert_array_equal(out.mask, expected)
    assert out.mask.dtype == np.uint8
    assert out.n_classes == 6
    assert out.class_names == ("background", "background-unused", "car-left", "car-right",
                               "person-left", "person-right")


def test_min_area_and_margin_boundaries() -> None:
    mask = np.zeros((10, W), np.uint8)
    mask[0:10, 42:48] = CAR   # cx 44.5: exactly 5.0 from the centre line -> dropped
    mask[0:10, 55:62] = CAR   # cx 58.0: 8.5 from it -> car-right
    mask[0:5, 5:15] = PERSON  # 50 px = min_area -> kept, left
    mask[0:7, 80:87] = PERSON  # 49 px -> dropped
    out = spatial_semantic(mask, NAMES, keep_whole=[BG])
    assert np.all(out.mask[:, 42:48] == 255)
    assert np.all(out.mask[:, 55:62] == 2 * CAR + 1)
    assert np.all(out.mask[0:5, 5:15] == 2 * PERSON)
    assert np.all(out.mask[0:7, 80:87] == 255)
    # a zero margin keeps the off-centre region; a region exactly on the centre line
    # (cx 49.5) is dropped even then
    mask[0:10, 48:52] = 0
    mask[0:10, 47:53] = PERSON
    out = spatial_semantic(mask, NAMES, center_margin=0.0, min_area=0, keep_whole=[BG])
    assert np.all(out.mask[:, 42:47] == 2 * CAR)
    assert np.all(out.mask[:, 47:53] == 255)
    assert np.all(out.mask[0:7, 80:87] == 2 * PERSON + 1)


def test_background_is_split_unless_kept_whole() -> None:
    mask = np.zeros((20, W), np.uint8)
    mask[:, 60:] = CAR  # background is one region at cx 29.5 -> background-left
    out = spatial_semantic(mask, NAMES)
    assert np.all(out.mask[:, :60] == 2 * BG)
    assert np.all(out.mask[:, 60:] == 2 * CAR + 1)
    assert out.class_names[:2] == ("background-left", "background-right")
    # one central background region (around a central car) is dropped
    mask = np.zeros((20, W), np.uint8)
    mask[5:15, 45:55] = CAR
    out = spatial_semantic(mask, NAMES, min_area=10)
    assert np.all(out.mask == 255)


def test_regions_are_four_connected() -> None:
    mask = np.zeros((20, W), np.uint8)
    mask[0:10, 10:20] = CAR
    mask[10:20, 20:30] = CAR  # touches the first block only at a corner
    # two 100-px regions (4-connectivity), not one 200-px region (8-connectivity)
    out = spatial_semantic(mask, NAMES, keep_whole=[BG], min_area=150)
    assert np.all(out.mask[mask == CAR] == 255)
    out = spatial_semantic(mask, NAMES, keep_whole=[BG], min_area=100)
    assert np.all(out.mask[mask == CAR] == 2 * CAR)


def test_scored_with_matched_miou() -> None:
    labels = spatial_semantic(_scene(), NAMES, keep_whole=[BG])
    cluster_of = np.arange(256)
    cluster_of[[0, 2, 3, 4]] = [3, 0, 2, 1]      # an arbitrary cluster per new class
    pred = cluster_of[labels.mask]
    pred[labels.mask == 255] = 0
    r = matched_miou(pred, labels.mask, n_classes=labels.n_classes, n_clusters=4)
    assert r.miou == pytest.approx(1.0)
    np.testing.assert_array_equal(r.present, [True, False, True, True, True, False])


def test_names_and_bad_input() -> None:
    assert spatial_semantic_names(["a", "b"]) == ("a-left", "a-right", "b-left", "b-right")
    with pytest.raises(ValueError, match="outside"):
        spatial_semantic(np.full((4, 4), 3, np.uint8), NAMES)
    with pytest.raises(ValueError, match="collides"):
        spatial_semantic(np.zeros((4, 4), np.uint8), NAMES, ignore_index=5)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        spatial_semantic(np.zeros((2, 4, 4), np.uint8), NAMES)
    with pytest.raises(ValueError, match="keep_whole"):
        spatial_semantic(np.zeros((4, 4), np.uint8), NAMES, keep_whole=[7])
    with pytest.raises(ValueError, match="center_margin"):
        spatial_semantic(np.zeros((4, 4), np.uint8), NAMES, center_margin=0.5)
    with pytest.raises(TypeError, match="integer"):
        spatial_semantic(np.zeros((4, 4)), NAMES)

"""Label conventions: COCO-Stuff-27 / 171 and Cityscapes-27 on synthetic masks."""

import numpy as np
import pytest

from interpret_spectral.evaluation.conventions import (
    CITYSCAPES27_CLASSES,
    COCOSTUFF27_CLASSES,
    COCOSTUFF_FINE_CLASSES,
    COCOSTUFF_UNUSED_IDS,
    cityscapes27,
    cocostuff171,
    cocostuff27,
    label_convention,
)


def test_cocostuff27_known_ids():
    # stuffthingmaps value = COCO id - 1
    fine = {"person": 0, "car": 2, "dog": 17, "pizza": 58, "tv": 71, "grass": 123, "sky-other": 156,
            "wall-brick": 170, "water-other": 177, "wood": 181}
    expected = {"person": "person", "car": "vehicle", "dog": "animal", "pizza": "food-things",
                "tv": "electronic", "grass": "plant", "sky-other": "sky", "wall-brick": "wall",
                "water-other": "water", "wood": "solid"}
    for name, value in fine.items():
        assert COCOSTUFF_FINE_CLASSES[value] == name
    mask = np.array(list(fine.values()) + [255], dtype=np.uint8).reshape(1, -1)
    coarse = cocostuff27(mask)
    assert coarse.dtype == np.uint8 and coarse[0, -1] == 255
    assert [COCOSTUFF27_CLASSES[c] for c in coarse[0, :-1]] == list(expected.values())


def test_cocostuff_tables_are_complete():
    assert len(COCOSTUFF27_CLASSES) == 27 and len(COCOSTUFF_FINE_CLASSES) == 171
    assert COCOSTUFF_UNUSED_IDS == (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
    coarse = cocostuff27(np.arange(182))
    assert set(coarse.tolist()) == set(range(27))
    assert (coarse[:91] < 12).all() and (coarse[91:] >= 12).all()  # things first, then stuff
    renumbered = cocostuff171(np.arange(182))
    assert sorted(set(renumbered.tolist()) - {255}) == list(range(171))
    assert (renumbered[list(COCOSTUFF_UNUSED_IDS)] == 255).all()


def test_cityscapes27_known_ids():
    ids = np.array([[0, 6, 7, 8, 11, 23, 24, 26, 33, 255]])
    out = cityscapes27(ids)
    assert out[0, :2].tolist() == [255, 255] and out[0, -1] == 255
    assert [CITYSCAPES27_CLASSES[c] for c in out[0, 2:-1]] == [
        "road", "sidewalk", "building", "sky", "person", "car", "bicycle"]
    assert len(CITYSCAPES27_CLASSES) == 27


def test_bad_masks_are_refused():
    with pytest.raises(ValueError, match="outside 0..181"):
        cocostuff27(np.array([200]))
    with pytest.raises(ValueError, match="outside 0..33"):
        cityscapes27(np.array([40]))
    with pytest.raises(ValueError, match="integer"):
        cityscapes27(np.array([7.0]))
    with pytest.raises(ValueError, match="unknown label convention"):
        label_convention("ade20k")
    reader, names = label_convention("cocostuff27")
    assert reader is cocostuff27 and names == COCOSTUFF27_CLASSES

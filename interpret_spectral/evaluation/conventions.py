"""Label conventions of the unsupervised segmentation benchmarks: COCO-Stuff-27 and Cityscapes-27.

- **COCO-Stuff-27** (IIC, PiCIE, STEGO): the fine COCO-Stuff labels of the
  ``stuffthingmaps`` PNGs (value = COCO category id - 1, so ``0`` is *person* and
  ``181`` *wood*; 171 of the 182 ids occur, ``255`` is unlabeled) are merged into 27
  coarse classes, 12 "things" (ids 0-11) then 15 "stuff" (ids 12-26), with the
  fine-to-coarse table of STEGO's ``data.py`` (itself from IIC's
  ``cocostuff_fine_to_coarse``).
- **Cityscapes-27** (STEGO): the 34 Cityscapes label ids (``*_labelIds.png``, 0-33)
  minus ``first_nonvoid = 7``: ids 7-33 become classes 0-26 (*road* ... *bicycle*),
  ids 0-6 (unlabeled, ego vehicle, rectification border, out of roi, static,
  dynamic, ground) are ignored.

Every reader returns ``uint8`` masks with ``255`` for ignored pixels, the convention
of :class:`interpret_spectral.evaluation.folders.SegmentationFolder`.

Examples
--------
>>> import numpy as np
>>> cocostuff27(np.array([[0, 2, 156, 255]])).tolist()
[[9, 11, 23, 255]]
>>> COCOSTUFF27_CLASSES[9], cityscapes27(np.array([7, 26, 33, 3])).tolist()
('person', [0, 19, 26, 255])
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

__all__ = [
    "IGNORE_INDEX",
    "COCOSTUFF27_CLASSES",
    "COCOSTUFF_FINE_CLASSES",
    "COCOSTUFF_UNUSED_IDS",
    "COCOSTUFF_FINE_TO_27",
    "CITYSCAPES_LABEL_NAMES",
    "CITYSCAPES27_CLASSES",
    "CITYSCAPES_FIRST_NONVOID",
    "cocostuff27",
    "cocostuff171",
    "cityscapes27",
    "label_convention",
]

IGNORE_INDEX = 255

#: The 27 coarse classes, things (0-11) first, then stuff (12-26).
COCOSTUFF27_CLASSES: tuple[str, ...] = (
    "electronic", "appliance", "food-things", "furniture-things", "indoor", "kitchen", "accessory",
    "animal", "outdoor", "person", "sports", "vehicle",
    "ceiling", "floor", "food-stuff", "furniture-stuff", "raw-material", "textile", "wall", "window",
    "building", "ground", "plant", "sky", "solid", "structural", "water",
)

# COCO-Stuff names by COCO category id (1-based); None for the 11 ids no annotation uses.
_FINE_BY_COCO_ID: tuple[str | None, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", None, "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", None, "backpack", "umbrella", None,
    None, "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", None,
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    None, "dining table", None, None, "toilet", None, "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", None, "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush", None,
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard",
    "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard",
    "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone",
    "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass",
    "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss",
    "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic",
    "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad",
    "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)

#: Fine class names by stuffthingmaps value (COCO id - 1), for the 171 values that occur.
COCOSTUFF_FINE_CLASSES: dict[int, str] = {i: n for i, n in enumerate(_FINE_BY_COCO_ID) if n is not None}
#: stuffthingmaps values of the 11 COCO ids without annotations (street sign, hat, shoe, ...).
COCOSTUFF_UNUSED_IDS: tuple[int, ...] = tuple(i for i, n in enumerate(_FINE_BY_COCO_ID) if n is None)

# Coarse class of stuffthingmaps values 0..181, in order (STEGO's fine_to_coarse).
_FINE_TO_27 = (
    9, 11, 11, 11, 11, 11, 11, 11, 11, 8, 8, 8, 8, 8, 8, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    6, 6, 6, 6, 6, 6, 6, 6, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 5, 5, 5, 5, 5, 5, 5, 5,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0,
    1, 1, 1, 1, 1, 1, 4, 4, 4, 4, 4, 4, 4, 4, 17, 17, 22, 20, 20, 22, 15, 25, 16, 13, 12, 12,
    17, 17, 23, 15, 15, 17, 15, 21, 15, 25, 13, 13, 13, 13, 13, 22, 26, 14, 14, 15, 22, 21,
    21, 24, 20, 22, 15, 17, 16, 15, 22, 24, 21, 17, 25, 16, 21, 17, 22, 16, 21, 21, 25, 21,
    26, 21, 24, 20, 17, 14, 21, 26, 15, 23, 20, 21, 24, 15, 24, 22, 25, 15, 20, 17, 17, 22,
    14, 18, 18, 18, 18, 18, 18, 18, 26, 26, 19, 19, 24,
)
#: stuffthingmaps value (0..181) -> coarse class (0..26).
COCOSTUFF_FINE_TO_27: dict[int, int] = dict(enumerate(_FINE_TO_27))

#: Cityscapes label names by label id 0..33 (cityscapesScripts ``labels.py``).
CITYSCAPES_LABEL_NAMES: tuple[str, ...] = (
    "unlabeled", "ego vehicle", "rectification border", "out of roi", "static", "dynamic", "ground",
    "road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail", "bridge",
    "tunnel", "pole", "polegroup", "traffic light", "traffic sign", "vegetation", "terrain", "sky",
    "person", "rider", "car", "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle",
)
#: STEGO's ``first_nonvoid``: label ids below it are ignored, the rest shift down by it.
CITYSCAPES_FIRST_NONVOID = 7
#: The 27 Cityscapes classes of STEGO (label ids 7..33).
CITYSCAPES27_CLASSES: tuple[str, ...] = CITYSCAPES_LABEL_NAMES[CITYSCAPES_FIRST_NONVOID:]


def _lookup(mask: Any, table: np.ndarray, what: str, ignore_values: tuple[int, ...]) -> np.ndarray:
    """Map integer ``mask`` through ``table`` (value -> new id or 255); ``ignore_values`` stay ignored."""
    array = np.asarray(mask)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} masks must hold integer label ids, got dtype {array.dtype}")
    ignored = np.isin(array, ignore_values)
    bad = (~ignored) & ((array < 0) | (array >= len(table)))
    if bad.any():
        values = np.unique(array[bad])[:5].tolist()
        raise ValueError(
            f"{what} masks hold ids {values} outside 0..{len(table) - 1} (and not {list(ignore_values)}); "
            "check that the masks follow this convention"
        )
    out = np.full(array.shape, IGNORE_INDEX, dtype=np.uint8)
    out[~ignored] = table[array[~ignored]]
    return out


def cocostuff27(mask: Any) -> np.ndarray:
    """Map fine COCO-Stuff labels (stuffthingmaps values 0..181, 255 unlabeled) to the 27 classes.

    Parameters
    ----------
    mask : array-like of int
        Fine labels: stuffthingmaps values (COCO category id - 1); ``255`` (and ``-1``,
        STEGO's in-memory unlabeled value) is ignored.

    Returns
    -------
    numpy.ndarray
        uint8 coarse ids 0..26 (:data:`COCOSTUFF27_CLASSES`), 255 where ignored.

    Examples
    --------
    >>> import numpy as np
    >>> [COCOSTUFF27_CLASSES[c] for c in cocostuff27(np.array([123, 170, 177]))]
    ['plant', 'wall', 'water']
    """
    table = np.asarray(_FINE_TO_27, dtype=np.uint8)
    return _lookup(mask, table, "COCO-Stuff", (IGNORE_INDEX, -1))


def cocostuff171(mask: Any) -> np.ndarray:
    """Renumber fine COCO-Stuff labels (0..181) to the 171 contiguous classes that occur.

    The 11 unused ids (:data:`COCOSTUFF_UNUSED_IDS`) and ``255`` become ``255``.

    Examples
    --------
    >>> import numpy as np
    >>> cocostuff171(np.array([0, 10, 11, 12, 181])).tolist()
    [0, 10, 255, 11, 170]
    """
    table = np.full(len(_FINE_BY_COCO_ID), IGNORE_INDEX, dtype=np.uint8)
    used = sorted(COCOSTUFF_FINE_CLASSES)
    table[used] = np.arange(len(used))
    return _lookup(mask, table, "COCO-Stuff", (IGNORE_INDEX, -1))


def cityscapes27(mask: Any) -> np.ndarray:
    """Map Cityscapes label ids (0..33) to STEGO's 27 classes; ids 0..6 and 255 (or -1) are ignored.

    Examples
    --------
    >>> import numpy as np
    >>> [CITYSCAPES27_CLASSES[c] for c in cityscapes27(np.array([7, 23, 24]))]
    ['road', 'sky', 'person']
    """
    table = np.full(len(CITYSCAPES_LABEL_NAMES), IGNORE_INDEX, dtype=np.uint8)
    table[CITYSCAPES_FIRST_NONVOID:] = np.arange(len(CITYSCAPES27_CLASSES))
    return _lookup(mask, table, "Cityscapes", (IGNORE_INDEX, -1))


def label_convention(name: Literal["cocostuff27", "cocostuff171", "cityscapes27"]) -> tuple[Any, tuple[str, ...]]:
    """The mask reader and class names of a convention, by name.

    Examples
    --------
    >>> reader, names = label_convention("cityscapes27")
    >>> len(names), reader.__name__
    (27, 'cityscapes27')
    """
    conventions = {
        "cocostuff27": (cocostuff27, COCOSTUFF27_CLASSES),
        "cocostuff171": (cocostuff171, tuple(COCOSTUFF_FINE_CLASSES[i] for i in sorted(COCOSTUFF_FINE_CLASSES))),
        "cityscapes27": (cityscapes27, CITYSCAPES27_CLASSES),
    }
    if name not in conventions:
        raise ValueError(f"unknown label convention {name!r}; choose one of {sorted(conventions)}")
    return conventions[name]

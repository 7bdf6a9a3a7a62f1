"""Image + mask folders for scoring segmentations.

A *segmentation folder* is laid out as::

    root/
      classes.txt     one class name per line, line i is class id i (optional)
      images/         RGB images (.jpg, .jpeg or .png)
      masks/          single-channel uint8 PNG class ids, 255 = ignore,
                      same size as the image, same file stem as the image

(the layout of PASCAL VOC and CamVid as the unsupervised segmentation literature
ships them).  :class:`SegmentationFolder` reads one, optionally with the evaluation
preprocessing of that literature.  ``classes.txt`` is needed only where class
*names* are used: scores such as oracle mIoU need none, and the number of classes
can be read from the masks (:meth:`SegmentationFolder.infer_n_classes`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, overload

import numpy as np
from PIL import Image

__all__ = ["SegmentationSample", "SegmentationFolder", "IMAGE_SUFFIXES", "MissingClassesError"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
Protocol = Literal["native", "short_side", "picie"]
_PROTOCOLS = ("native", "short_side", "picie")
_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC}


@dataclasses.dataclass(frozen=True, eq=False)
class SegmentationSample:
    """One image and its ground truth.

    Attributes
    ----------
    id : str
        File stem shared by the image and the mask.
    image : PIL.Image.Image
        RGB image, after preprocessing.
    mask : numpy.ndarray
        (H, W) uint8 class ids (``255`` = ignore), the image's size.
    """

    id: str
    image: Image.Image
    mask: np.ndarray


class MissingClassesError(FileNotFoundError):
    """A folder without ``classes.txt`` asked for its class names."""


def _files_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise ValueError(f"{folder} holds two files with stem {path.stem!r}: "
                             f"{found[path.stem].name} and {path.name}; keep one.")
        found[path.stem] = path
    return found


def _short_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``size`` (torchvision's Resize(int) rule)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


class SegmentationFolder(Sequence[SegmentationSample]):
    """A folder of images, masks and ``classes.txt`` as a sequence of samples.

    Parameters
    ----------
    root : str or pathlib.Path
        Folder holding ``images/``, ``masks/`` and (optionally) ``classes.txt``.
    size : int or None
        Shorter-side length for ``"short_side"`` and ``"picie"`` (default 320 for
        ``"picie"``).
    crop : int or None
        Side of the centre crop for ``"picie"`` (default: ``size``).
    protocol : {"native", "short_side", "picie"}
        ``"native"``: images and masks as stored.  ``"short_side"``: resize so the
        shorter side is ``size`` (longer side ``int(size * long / short)``, as
        torchvision's ``Resize(size)``).  ``"picie"``: the PiCIE / STEGO evaluation
        protocol, shorter side to ``size`` then a ``crop x crop`` centre crop
        (offsets ``round((side - crop) / 2)``, as torchvision's ``CenterCrop``).
    resample : {"bilinear", "bicubic", "nearest"}
        Image interpolation when resizing; masks always use nearest neighbour.

    Attributes
    ----------
    classes : list of str
        Class names, index = class id; asking for them in a folder without
        ``classes.txt`` raises :class:`MissingClassesError` (see ``n_classes``).
    n_classes : int or None
        Number of classes from ``classes.txt``; None without it.
    ids : list of str
        Sample ids (file stems), sorted.
    ignore_index : int
        Mask value of ignored pixels (255).

    Examples
    --------
    >>> ds = SegmentationFolder("data/voc", protocol="picie")  # doctest: +SKIP
    >>> sample = ds[0]                                                   # doctest: +SKIP
    >>> sample.image.size, sample.mask.shape                             # doctest: +SKIP
    ((320, 320), (320, 320))

    A folder of images and masks alone (no ``classes.txt``):

    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> for sub in ("images", "masks"):
    ...     (root / sub).mkdir()
    >>> Image.new("RGB", (4, 2)).save(root / "images" / "a.png")
    >>> Image.fromarray(np.array([[0, 0, 3, 255]] * 2, np.uint8)).save(root / "masks" / "a.png")
    >>> folder = SegmentationFolder(root)
    >>> folder.n_classes is None, folder.infer_n_classes(), folder.mask("a").shape
    (True, 4, (2, 4))
    """

    ignore_index: int = 255

    def __init__(self, root: str | Path, size: int | None = None, crop: int | None = None,
                 protocol: Protocol = "native", resample: str = "bilinear") -> None:
        if protocol not in _PROTOCOLS:
            raise ValueError(f"protocol must be one of {_PROTOCOLS}, got {protocol!r}.")
        if resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {tuple(_RESAMPLE)}, got {resample!r}.")
        if protocol == "native" and (size is not None or crop is not None):
            raise ValueError("protocol='native' keeps the stored size; pass "
                             "protocol='short_side' or 'picie' to use size/crop.")
        if protocol == "short_side" and (size is None or crop is not None):
            raise ValueError("protocol='short_side' needs size= and takes no crop=; "
                             "use protocol='picie' to resize and centre-crop.")
        if protocol == "picie":
            size = 320 if size is None else size
            crop = size if crop is None else crop
            if crop > size:
                raise ValueError(f"crop={crop} is larger than the shorter side size={size}.")
        for name, value in (("size", size), ("crop", crop)):
            if value is not None and (int(value) != value or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value}.")
        self.root = Path(root)
        self.protocol: str = protocol
        self.size = size
        self.crop = crop
        self.resample = resample
        self._classes = self._read_layout()

    @property
    def classes(self) -> list[str]:
        """Class names from ``classes.txt`` (index = class id).

        Raises
        ------
        MissingClassesError
            The folder has no ``classes.txt``.
        """
        if self._classes is None:
            raise MissingClassesError(
                f"{self.root} has no classes.txt, and class names are needed here: write one class "
                "name per line (line i names mask id i) into classes.txt"
            )
        return list(self._classes)

    @property
    def n_classes(self) -> int | None:
        """Number of classes in ``classes.txt``; None when the folder has none."""
        return None if self._classes is None else len(self._classes)

    def _read_layout(self) -> list[str] | None:
        root = self.root
        expected = "root/images/ and root/masks/ (and optionally root/classes.txt)"
        if not root.is_dir():
            raise FileNotFoundError(f"segmentation folder {root} does not exist; expected "
                                    f"{expected}.")
        missing = [n for n in ("images", "masks") if not (root / n).is_dir()]
        if missing:
            raise FileNotFoundError(f"{root} lacks {', '.join(missing)}; a segmentation "
                                    f"folder holds {expected}.")
        classes: list[str] | None = None
        if (root / "classes.txt").is_file():
            classes = [line.strip() for line in
                       (root / "classes.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
            if not classes:
                raise ValueError(f"{root / 'classes.txt'} is empty; list one class name per line "
                                 "(or remove it: oracle mIoU needs no names).")
        images = _files_by_stem(root / "images", IMAGE_SUFFIXES)
        masks = _files_by_stem(root / "masks", (".png",))
        if not images:
            raise ValueError(f"{root / 'images'} holds no image ({', '.join(IMAGE_SUFFIXES)}).")
        no_mask = sorted(set(images) - set(masks))
        if no_mask:
            raise ValueError(f"{len(no_mask)} image(s) in {root / 'images'} have no mask "
                             f"in {root / 'masks'} (same stem, .png): {no_mask[:5]}.")
        no_image = sorted(set(masks) - set(images))
        if no_image:
            raise ValueError(f"{len(no_image)} mask(s) in {root / 'masks'} have no image: "
                             f"{no_image[:5]}.")
        self.ids = sorted(images)
        self._position_of = {sid: i for i, sid in enumerate(self.ids)}
        self._images = images
        self._masks = masks
        return classes

    def __repr__(self) -> str:
        classes = "no classes.txt" if self._classes is None else f"{len(self._classes)} classes"
        return (f"SegmentationFolder({str(self.root)!r}, {len(self)} samples, "
                f"{classes}, protocol={self.protocol!r})")

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> SegmentationSample: ...

    @overload
    def __getitem__(self, index: slice) -> list[SegmentationSample]: ...

    def __getitem__(self, index: int | slice) -> SegmentationSample | list[SegmentationSample]:
        """Load one sample (or a list for a slice), preprocessed by the protocol."""
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int or a slice, got {type(index).__name__}.")
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples.")
        sample_id = self.ids[int(index)]
        image, mask = self._load(sample_id)
        assert image is not None
        return SegmentationSample(id=sample_id, image=image, mask=mask)

    def index(self, sample_id: str) -> int:
        """Position of the sample with this id (file stem).

        Raises
        ------
        KeyError
            No image has this stem.
        """
        position = self._position_of.get(str(sample_id))
        if position is None:
            raise KeyError(f"{self.root} has no image with stem {sample_id!r} (ids are the image file stems, "
                           f"e.g. {self.ids[:3]})")
        return position

    def image_path(self, sample_id: str) -> Path:
        """The image file of a sample (as stored, before any preprocessing)."""
        return self._images[self.ids[self.index(sample_id)]]

    def mask(self, sample_id: str) -> np.ndarray:
        """The mask of one sample alone (preprocessed as :meth:`__getitem__` does), without decoding its image.

        Examples
        --------
        >>> SegmentationFolder("data/voc").mask("vainf_0000").dtype  # doctest: +SKIP
        dtype('uint8')
        """
        return self._load(self.ids[self.index(sample_id)], with_image=False)[1]

    def infer_n_classes(self) -> int:
        """Number of classes read from the masks: the largest non-ignore id + 1 (every mask is read).

        For folders without ``classes.txt``: a class that occurs in no mask (above
        the largest that does) cannot be seen this way; pass the count explicitly
        where that matters.

        Raises
        ------
        ValueError
            Every pixel of every mask is ``ignore_index``.
        """
        if self._classes is not None:
            return len(self._classes)
        largest = -1
        for sample_id in self.ids:
            values = np.unique(self.mask(sample_id))
            values = values[values != self.ignore_index]
            if values.size:
                largest = max(largest, int(values.max()))
        if largest < 0:
            raise ValueError(f"every mask pixel in {self.root / 'masks'} is ignore ({self.ignore_index}); "
                             "there is no class to count.")
        return largest + 1

    def _load(self, sample_id: str, with_image: bool = True) -> tuple[Image.Image | None, np.ndarray]:
        """The preprocessed image (None unless ``with_image``) and mask of one sample."""
        mask_path = self._masks[sample_id]
        with Image.open(self._images[sample_id]) as img:
            image_size = img.size
            image = img.convert("RGB") if with_image else None
        with Image.open(mask_path) as m:
            if m.mode not in ("L", "P"):
                raise ValueError(f"mask {mask_path} has mode {m.mode!r}; masks must be "
                                 "single-channel 8-bit PNGs of class ids (mode 'L' or 'P').")
            mask_image = m.copy()
        if mask_image.size != image_size:
            raise ValueError(f"mask {mask_path} is {mask_image.size} but its image is "
                             f"{image_size} (width, height); they must match.")
        if self._classes is not None:
            bad = np.setdiff1d(np.unique(np.asarray(mask_image)),
                               [*range(len(self._classes)), self.ignore_index])
            if bad.size:
                raise ValueError(f"mask {mask_path} holds ids {bad.tolist()} that are neither "
                                 f"classes (0 .. {len(self._classes) - 1}) nor "
                                 f"ignore ({self.ignore_index}).")
        if self.protocol != "native":
            assert self.size is not None
            new_size = _short_side_size(*image_size, self.size)
            if image is not None:
                image = image.resize(new_size, _RESAMPLE[self.resample])
            mask_image = mask_image.resize(new_size, Image.Resampling.NEAREST)
        if self.protocol == "picie":
            assert self.crop is not None
            width, height = mask_image.size
            left = int(round((width - self.crop) / 2.0))
            top = int(round((height - self.crop) / 2.0))
            box = (left, top, left + self.crop, top + self.crop)
            mask_image = mask_image.crop(box)
            if image is not None:
                image = image.crop(box)
        return image, np.array(mask_image, dtype=np.uint8)

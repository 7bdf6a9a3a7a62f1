"""What ``probe()`` accepts as inputs, and reading image files of every common kind.

:func:`load_image` turns any image into the 8-bit RGB picture a vision model takes:

- EXIF orientation is applied (``PIL.ImageOps.exif_transpose``): a photo stored
  sideways with an orientation tag is read upright, as viewers show it;
- 16-bit (and 32-bit integer) grayscale is *rescaled* to 0..255 over its type's range
  (``value * 255 / 65535``), never clipped; floating-point images are rescaled from
  [0, 1], or from their own minimum and maximum when they exceed it;
- palette, CMYK, 1-bit and grayscale images are converted to RGB;
- transparency (RGBA, LA, a palette with a transparent colour) is composited on white
  (what an image viewer shows on a white page); the alpha channel is then dropped.

Every error names the file: a truncated or corrupt file raises :class:`ImageReadError`
with its path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_SUFFIXES", "ImageReadError", "load_image", "list_inputs", "InputItem"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageReadError(OSError):
    """An image file that cannot be read; the message names the file and what went wrong."""


@dataclass
class InputItem:
    """One sample of a probe: its id and where it comes from (a PIL image, a path or a tensor slice)."""

    sample_id: str
    source: Any


def _rescale_high_depth(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float grayscale to 8-bit ``L``, by rescaling (never clipping)."""
    values = np.asarray(image)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.size and 0 <= values.min() and values.max() <= 65535):
        scaled = values.astype(np.float64) * (255.0 / 65535.0)
    elif image.mode == "I":
        low, high = float(values.min()), float(values.max())
        scaled = (values.astype(np.float64) - low) * (255.0 / (high - low) if high > low else 0.0)
    else:  # "F"
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            raise ValueError("the image holds no finite value")
        low, high = float(finite.min()), float(finite.max())
        if low >= 0.0 and high <= 1.0:
            low, high = 0.0, 1.0
        scaled = (np.nan_to_num(values, nan=low, posinf=high, neginf=low) - low) * (
            255.0 / (high - low) if high > low else 0.0
        )
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        image = _rescale_high_depth(image)
    elif mode == "P" or mode == "PA":
        image = image.convert("RGBA" if ("transparency" in image.info or mode == "PA") else "RGB")
    elif mode == "L" and "transparency" in image.info or mode == "RGB" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(source: Any) -> Image.Image:
    """An 8-bit RGB PIL image from a path or a PIL image (see the module notes).

    Parameters
    ----------
    source : path-like or PIL.Image.Image

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``, fully loaded (the file is closed).

    Raises
    ------
    ImageReadError
        The file cannot be read as an image (missing, truncated, corrupt); names the path.

    Examples
    --------
    >>> deep = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    >>> np.asarray(load_image(deep))[0, :, 0].tolist()
    [0, 128, 255]
    >>> load_image(Image.new("RGBA", (1, 1), (0, 0, 0, 0))).getpixel((0, 0))  # transparent: white
    (255, 255, 255)
    """
    if isinstance(source, Image.Image):
        try:
            return _to_rgb(source)
        except (OSError, ValueError) as error:
            raise ImageReadError(f"cannot convert the given {source.mode} image to RGB: {error}") from error
    path = Path(source)
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(image)
    except FileNotFoundError as error:
        raise ImageReadError(f"image {path} does not exist") from error
    except IsADirectoryError as error:
        raise ImageReadError(f"{path} is a folder, not an image") from error
    except UnidentifiedImageError as error:
        raise ImageReadError(f"{path} is not an image PIL can read (unknown or corrupt format)") from error
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"cannot read image {path}: {error} (truncated or corrupt file?)") from error


def _folder_images(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def list_inputs(inputs: Any, ids: Sequence[str] | None = None) -> tuple[list[InputItem], bool]:
    """Normalise ``probe()``'s inputs into items; returns ``(items, is_tensor)``.

    A tensor is a batch (first dimension = samples, ids ``"0"``, ``"1"``, ...); a path
    to a folder (whatever its name, ``x.png`` included) stands for its image files,
    sorted; a path to a file, a PIL image, or a list of these are single images (ids:
    file stems, ``image-<i>``).

    Examples
    --------
    >>> items, is_tensor = list_inputs(torch.zeros(2, 3, 8, 8))
    >>> [item.sample_id for item in items], is_tensor
    (['0', '1'], True)
    """
    if isinstance(inputs, torch.Tensor):
        if inputs.ndim < 1 or len(inputs) == 0:
            raise ValueError("a tensor input must be a non-empty batch (first dimension = samples)")
        names = list(ids) if ids is not None else [str(i) for i in range(len(inputs))]
        if len(names) != len(inputs):
            raise ValueError(f"{len(names)} sample ids for {len(inputs)} samples")
        return [InputItem(str(n), inputs[i : i + 1]) for i, n in enumerate(names)], True
    if isinstance(inputs, (str, os.PathLike)):
        path = Path(inputs)
        if not path.exists():
            raise FileNotFoundError(
                f"input {path} does not exist; give a folder of images, a list of images or paths, or a tensor"
            )
        inputs = _folder_images(path) if path.is_dir() else [path]
    if isinstance(inputs, Image.Image):
        inputs = [inputs]
    if not isinstance(inputs, Sequence) or isinstance(inputs, (str, bytes)):
        raise TypeError(
            f"inputs must be a tensor batch, a list of PIL images or paths, or a folder; got {type(inputs).__name__}"
        )
    if len(inputs) == 0:
        raise ValueError("no inputs given")
    items = []
    for i, source in enumerate(inputs):
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if path.is_dir():
                items.extend(InputItem(file.stem, file) for file in _folder_images(path))
                continue
            if not path.is_file():
                raise FileNotFoundError(f"image {path} does not exist")
            items.append(InputItem(path.stem, path))
        elif isinstance(source, Image.Image):
            items.append(InputItem(f"image-{i}", source))
        else:
            raise TypeError(f"input {i} is a {type(source).__name__}; expected a PIL image or a path")
    if ids is not None:
        if len(ids) != len(items):
            raise ValueError(f"{len(ids)} sample ids for {len(items)} inputs")
        for item, name in zip(items, ids):
            item.sample_id = str(name)
    names = [item.sample_id for item in items]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"sample ids must be unique, repeated: {dupes[:5]}; pass sample_ids=")
    return items, False

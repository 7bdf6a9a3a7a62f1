"""Image preprocessing shared by the adapters: resize (square or short side) and normalise.

Adapters of image models (timm, Hugging Face, Stable Diffusion) turn PIL images into a
model-ready batch with :func:`preprocess_images`; only the numbers differ between
families (size, mean, std, interpolation).  The whole image is resized, never cropped,
so that every token maps onto the image the store keeps in ``pixels``.

Two ways to size an image:

``resize="square"``
    every image to ``image_size`` (an int for a square, or ``(height, width)``): images
    of any aspect ratio fit in one store, non-square ones are stretched.
``resize="short_side"``
    the short side to ``image_size`` (an int, the paper's 448 px), the long side in
    proportion, rounded to a multiple of the patch size: the aspect ratio is kept and
    the token grid need not be square (a 2:1 landscape image gives a 1:2 ``(h, w)``
    grid).  The model interpolates its position embedding to the grid.  A store holds
    one grid per site, so the images of one store must share an aspect ratio.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

__all__ = [
    "RESIZE_MODES", "preprocess_images", "target_size", "resample_filter", "size_pair", "resolve_image_size",
    "check_patch_multiple", "image_batch_size", "warn_size_differs",
]

RESIZE_MODES = ("square", "short_side")
_RESAMPLE = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
}


def size_pair(size: int | Sequence[int], what: str = "image_size") -> tuple[int, int]:
    """``size`` as a ``(height, width)`` pair of positive ints.

    Examples
    --------
    >>> size_pair(448), size_pair((224, 448))
    ((448, 448), (224, 448))
    """
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        pair = (int(size), int(size))
    elif (
        isinstance(size, Sequence)
        and not isinstance(size, str)
        and len(size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
    ):
        pair = (int(size[0]), int(size[1]))
    else:
        raise TypeError(f"{what} must be an int or a (height, width) pair of ints, got {size!r}")
    if min(pair) < 1:
        raise ValueError(f"{what} must be positive, got {pair}")
    return pair


def check_patch_multiple(size: tuple[int, int], patch: tuple[int, int]) -> None:
    """Refuse an input ``(height, width)`` that the patch size does not divide; the message proposes a size.

    Examples
    --------
    >>> check_patch_multiple((32, 48), (8, 8))
    >>> check_patch_multiple((30, 32), (8, 8))
    Traceback (most recent call last):
    ValueError: input size 30x32 is not a multiple of the patch size 8x8; use e.g. image_size=32
    """
    if size[0] % patch[0] or size[1] % patch[1]:
        raise ValueError(
            f"input size {size[0]}x{size[1]} is not a multiple of the patch size {patch[0]}x{patch[1]}; "
            f"use e.g. image_size={max(1, round(size[0] / patch[0])) * patch[0]}"
        )


def resolve_image_size(
    image_size: int | Sequence[int] | None,
    resize: str,
    default: int | Sequence[int],
    patch: tuple[int, int] = (1, 1),
) -> int | tuple[int, int]:
    """The ``image_size`` an adapter preprocesses to, checked against ``resize`` and the patch size.

    Parameters
    ----------
    image_size : int or (int, int), optional
        What the user asked for; ``None`` for ``default``.
    resize : {"square", "short_side"}
        ``"square"`` gives a ``(height, width)`` pair; ``"short_side"`` one int, the short
        side (the short side of ``default`` when ``image_size`` is not given).
    default : int or (int, int)
        The model's own input size.
    patch : (int, int)
        The size must be a multiple of this.

    Examples
    --------
    >>> resolve_image_size(None, "square", (224, 224), (16, 16))
    (224, 224)
    >>> resolve_image_size(None, "short_side", (224, 448), (16, 16))
    224
    >>> resolve_image_size((224, 230), "square", 224, (16, 16))  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: input size 224x230 is not a multiple of the patch size 16x16 ...
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if resize == "square":
        pair = size_pair(default if image_size is None else image_size, "image_size")
        check_patch_multiple(pair, patch)
        return pair
    short = min(size_pair(default, "image_size")) if image_size is None else image_size
    if isinstance(short, bool) or not isinstance(short, (int, np.integer)) or short < 1:
        raise TypeError(f"resize='short_side' takes image_size as one positive int (the short side), got {short!r}")
    check_patch_multiple((int(short), int(short)), patch)
    return int(short)


def image_batch_size(batch: Any, model: str, channels: int | None = None) -> tuple[int, int]:
    """``(height, width)`` of a ``(B, C, H, W)`` image batch, after checking its shape and channels.

    Parameters
    ----------
    batch : torch.Tensor
    model : str
        What takes the batch, for the messages (``"timm VisionTransformer"``).
    channels : int, optional
        The channels the model takes; not checked when ``None``.

    Examples
    --------
    >>> image_batch_size(torch.zeros(2, 3, 32, 48), "a ViT", channels=3)
    (32, 48)
    >>> image_batch_size(torch.zeros(2, 32, 48), "a ViT")
    Traceback (most recent call last):
    TypeError: a ViT takes a (B, C, H, W) image tensor, got (2, 32, 48)
    """
    if not isinstance(batch, torch.Tensor) or batch.ndim != 4:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise TypeError(f"{model} takes a (B, C, H, W) image tensor, got {shape}")
    if channels is not None and int(batch.shape[1]) != int(channels):
        raise ValueError(
            f"the batch has {int(batch.shape[1])} channels but {model} takes {channels} "
            f"(batch shape {tuple(batch.shape)}); give (B, {channels}, H, W) tensors, e.g. repeat a grayscale "
            "channel, or pass images and let the adapter preprocess them"
        )
    return int(batch.shape[-2]), int(batch.shape[-1])


def resample_filter(name: str) -> int:
    """The PIL resampling filter called ``name`` (``"bicubic"``, ``"bilinear"``, ...).

    Examples
    --------
    >>> resample_filter("bicubic") == Image.BICUBIC
    True
    """
    key = str(name).lower()
    if key not in _RESAMPLE:
        raise ValueError(f"unknown interpolation {name!r}; use one of {', '.join(_RESAMPLE)}")
    return _RESAMPLE[key]


def target_size(
    image_size: int | Sequence[int],
    original: tuple[int, int],
    resize: Literal["square", "short_side"] = "square",
    multiple: tuple[int, int] = (1, 1),
) -> tuple[int, int]:
    """The ``(height, width)`` an image of size ``original`` (height, width) is resized to.

    Parameters
    ----------
    image_size : int or (int, int)
        ``"square"``: the size itself (an int is a square); ``"short_side"``: the length of
        the short side (an int).
    original : (int, int)
        The image's ``(height, width)``.
    resize : {"square", "short_side"}
        See the module notes.
    multiple : (int, int)
        With ``"short_side"``, the long side is rounded to a multiple of this (the patch size).

    Examples
    --------
    >>> target_size(448, (500, 1000), "short_side", (14, 14))  # a 2:1 landscape image
    (448, 896)
    >>> target_size(448, (500, 1000))
    (448, 448)
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if resize == "square":
        return size_pair(image_size)
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 1:
        raise TypeError(
            f"resize='short_side' takes image_size as one positive int (the short side), got {image_size!r}; "
            "use resize='square' for an exact (height, width)"
        )
    height, width = int(original[0]), int(original[1])
    if min(height, width) < 1:
        raise ValueError(f"an image of {height}x{width} pixels cannot be resized")
    short = int(image_size)
    if height <= width:
        long = max(multiple[1], round(width * short / height / multiple[1]) * multiple[1])
        return short, long
    long = max(multiple[0], round(height * short / width / multiple[0]) * multiple[0])
    return long, short


def preprocess_images(
    images: Sequence[Any],
    image_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    interpolation: str = "bicubic",
    resize: Literal["square", "short_side"] = "square",
    multiple: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """Resize whole RGB images and normalise them: ``(pixels / 255 - mean) / std``, ``(B, 3, H, W)`` float32.

    Parameters
    ----------
    images : sequence of PIL.Image.Image
        RGB images (the engine's :func:`~interpret_spectral.capture.inputs.load_image`
        makes them from any file).
    image_size, resize, multiple
        See :func:`target_size`; every image of the batch must get the same size.
    mean, std : sequence of 3 floats
        Per-channel normalisation on the [0, 1] scale.
    interpolation : str
        PIL resampling filter name.

    Examples
    --------
    >>> batch = preprocess_images([Image.new("RGB", (50, 40), (255, 0, 0))], 32, (0.5,) * 3, (0.5,) * 3)
    >>> tuple(batch.shape), batch[0, :, 0, 0].tolist()
    ((1, 3, 32, 32), [1.0, -1.0, -1.0])
    """
    if len(images) == 0:
        raise ValueError("preprocess needs at least one image")
    mean_array = np.asarray(mean, dtype=np.float32).reshape(-1)
    std_array = np.asarray(std, dtype=np.float32).reshape(-1)
    if mean_array.shape != (3,) or std_array.shape != (3,) or np.any(std_array <= 0):
        raise ValueError(f"mean and std must hold 3 values each, std positive; got {list(mean)} and {list(std)}")
    resample = resample_filter(interpolation)
    arrays = []
    size = None
    for index, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f"preprocess takes PIL images, got {type(image).__name__} for image {index}")
        this = target_size(image_size, (image.height, image.width), resize, multiple)
        if size is not None and this != size:
            raise ValueError(
                f"image {index} ({image.width}x{image.height} px) resizes to {this[0]}x{this[1]}, the batch's first "
                f"image to {size[0]}x{size[1]}: with resize='short_side' the images of one batch (and one store) "
                "must share an aspect ratio; probe them separately, or use resize='square'"
            )
        size = this
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        pixels = np.asarray(rgb.resize((this[1], this[0]), resample), dtype=np.float32) / 255.0
        arrays.append((pixels - mean_array) / std_array)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def warn_size_differs(
    model: str, configured: tuple[int, int], actual: tuple[int, int], seen: set[tuple[int, int]] | None = None
) -> None:
    """Say (a ``UserWarning``; ``logging.captureWarnings`` routes it to logging) that a model runs at another input size than it was configured for.

    Nothing is said when the sizes are equal, nor when ``actual`` is in ``seen`` (the
    sizes already said, which this call adds to): once per size.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_size_differs("Dinov2Model", (224, 224), (448, 448))
    >>> "configured for 224x224" in str(caught[0].message)
    True
    """
    if actual == configured or (seen is not None and actual in seen):
        return
    if seen is not None:
        seen.add(actual)
    message = (
        f"{model} is configured for {configured[0]}x{configured[1]} px inputs and runs on "
        f"{actual[0]}x{actual[1]} px: its position embeddings are interpolated to the new grid"
    )
    warnings.warn(message, UserWarning, stacklevel=3)

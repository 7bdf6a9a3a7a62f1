"""Dense CRF refinement of per-pixel class probabilities (optional ``crf`` extra).

Fully connected CRF of Krähenbühl & Koltun with the parameters STEGO (and DeepLab
before it) use for unsupervised segmentation: an appearance-free smoothness kernel
(weight 3, spatial std 1 px) and a bilateral kernel (weight 4, spatial std 67 px,
colour std 3), 10 mean-field iterations.  Needs the ``pydensecrf2`` package
(imported as ``pydensecrf``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["dense_crf", "image_array"]


def image_array(image: Any) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB as a C-contiguous, writable array of its own.

    ``np.asarray`` of a PIL image is read-only, and pydensecrf's Cython buffers refuse
    read-only memory ("buffer source array is read-only"): the pixels are always copied.

    Examples
    --------
    >>> from PIL import Image
    >>> image_array(Image.new("RGB", (4, 2))).flags.writeable
    True
    """
    arr = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be a PIL image or an (H, W, 3) array, got shape {arr.shape}.")
    if arr.dtype != np.uint8:
        raise TypeError(f"image array must be uint8 RGB (0..255), got dtype {arr.dtype}.")
    return np.array(arr, dtype=np.uint8, order="C", copy=True)


def dense_crf(image: Any, probabilities: Any, max_iter: int = 10, pos_w: float = 3.0,
              pos_xy_std: float = 1.0, bi_w: float = 4.0, bi_xy_std: float = 67.0,
              bi_rgb_std: float = 3.0) -> np.ndarray:
    """Refine class probabilities with a fully connected CRF (STEGO parameters).

    Parameters
    ----------
    image : PIL.Image.Image or numpy.ndarray
        The RGB image, (H, W, 3) uint8 (read-only arrays, such as
        ``np.asarray(pil_image)``, are fine: the pixels are copied).
    probabilities : array_like
        (C, h, w) non-negative per-pixel class probabilities summing to 1 over C
        (e.g. a softmax).  When ``(h, w) != (H, W)`` they are upsampled bilinearly
        (``torch.nn.functional.interpolate``, ``align_corners=False``), which keeps
        them normalised.
    max_iter : int
        Mean-field iterations.
    pos_w, pos_xy_std : float
        Weight and spatial std (pixels) of the smoothness kernel.
    bi_w, bi_xy_std, bi_rgb_std : float
        Weight, spatial std (pixels) and colour std of the bilateral kernel.

    Returns
    -------
    numpy.ndarray
        (C, H, W) float32 refined probabilities; ``argmax(axis=0)`` gives labels.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.zeros((8, 8, 3), np.uint8)
    >>> probs = np.full((2, 4, 4), 0.5, np.float32); probs[0, :, :2] = 0.9; probs[1, :, :2] = 0.1
    >>> dense_crf(image, probs).shape
    (2, 8, 8)
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as err:
        raise ImportError("dense_crf needs pydensecrf2: pip install 'interpret-spectral[crf]' "
                          "(or pip install pydensecrf2).") from err
    rgb = image_array(image)
    height, width = rgb.shape[:2]
    probs = np.asarray(probabilities, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ValueError(f"probabilities must be (C, h, w) with C >= 2, got shape {probs.shape}.")
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or \
            not np.allclose(probs.sum(axis=0), 1.0, atol=1e-3):
        raise ValueError("probabilities must be finite, non-negative and sum to 1 over the "
                         "class axis (axis 0); apply a softmax to logits first.")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}.")
    if probs.shape[1:] != (height, width):
        import torch

        probs = torch.nn.functional.interpolate(
            torch.from_numpy(probs)[None], size=(height, width), mode="bilinear",
            align_corners=False)[0].numpy()
    n_classes = probs.shape[0]
    crf = dcrf.DenseCRF2D(width, height, n_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)
    crf.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=rgb, compat=bi_w)
    refined = np.asarray(crf.inference(int(max_iter)), dtype=np.float32)
    return refined.reshape(n_classes, height, width)

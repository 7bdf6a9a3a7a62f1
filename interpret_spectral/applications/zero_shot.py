"""Zero-shot semantic segmentation with CLIP (the paper's Appendix D.1, Table 7).

Regions come from the spectral decomposition of CLIP ViT-B/16 (the labels
:func:`interpret_spectral.segment` returns); each region is named by CLIP's text
tower:

1. **Pixel features** (:func:`clip_pixel_features`), as MaskCLIP (Zhou, Loy & Dai,
   ECCV 2022): the value vectors ``v`` of the final attention layer, read from the
   store (``v_proj`` output, bias included, heads concatenated), passed through

   - ``path="maskclip"`` (default, MaskCLIP's ViT recipe): the layer's output
     projection ``out_proj``, plus the layer's input (the block output of the
     previous site, the store's ``features`` there: probe with
     ``capture=("q", "k", "v", "features")``), plus the block's MLP
     ``mlp(layer_norm2(.))`` with its residual; then the vision tower's
     ``post_layernorm`` and ``visual_projection``.  Attention itself (the mixing of
     tokens by ``softmax(q k^T)``) is skipped: every token keeps its own value;
   - ``path="value"``: ``out_proj`` then ``post_layernorm`` and
     ``visual_projection`` (no residual, no MLP; needs only ``v``).

2. **Text embeddings** (:func:`text_embeddings`): for every class, CLIP's
   ``get_text_features`` of every prompt template (:data:`IMAGENET_TEMPLATES`,
   ImageNet-style, configurable), each L2-normalised, averaged, normalised again
   (CLIP's prompt ensembling).
3. **Regions** (:func:`zero_shot_segment`): the region feature is the mean pixel
   feature over the region; its cosine similarity to every class embedding is
   turned into a score; the region takes the best class, or background (label 0)
   where no class scores above ``threshold`` (0.7 in the paper).  ``score="softmax"``
   (default) is CLIP's class probability ``softmax(logit_scale * cosine)``
   (``logit_scale`` 100, CLIP's trained value); ``score="cosine"`` thresholds the
   raw cosine (CLIP image-text cosines rarely exceed 0.35, so 0.7 would leave
   everything background: the paper's "similarity above 0.7" is read as a
   probability).
4. **Baseline** (:func:`maskclip_segment`): the same per pixel, no regions (MaskCLIP).

Labels: ``0`` background, ``c + 1`` for class ``c`` of ``class_names`` (VOC order
with ``VOC_CLASSES``).  Paper (Table 7, VOC mIoU): ours 0.50, MaskCLIP 0.25,
GroupViT 0.53 -- with CLIP ViT-B/16 weights.

Examples
--------
>>> import numpy as np
>>> regions = np.array([[0, 0, 1, 1]])
>>> features = np.array([[[1.0, 0], [1, 0], [0, 1], [0, 1]]])
>>> text = np.array([[1.0, 0], [0, 1]])
>>> zero_shot_segment(regions, features, text, score="cosine").values[0].tolist()
[[1, 1, 2, 2]]
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import xarray as xr

from interpret_spectral.applications.clip import (
    CLIP_LOGIT_SCALE,
    IMAGENET_TEMPLATES,
    clip_pixel_features,
    load_clip,
    text_embeddings,
)
from interpret_spectral.segmentation import upsample_labels

__all__ = [
    "IMAGENET_TEMPLATES",
    "VOC_CLASSES",
    "CLIP_LOGIT_SCALE",
    "load_clip",
    "text_embeddings",
    "clip_pixel_features",
    "region_features",
    "zero_shot_segment",
    "maskclip_segment",
    "semantic_miou",
]

#: The 20 PASCAL VOC classes as prompts (label c + 1 is VOC class id c + 1; 0 is background).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train",
    "tv monitor",
)


def _regions_array(regions: Any) -> tuple[np.ndarray, dict[str, Any]]:
    if isinstance(regions, xr.DataArray):
        if "sample" not in regions.dims:
            regions = regions.expand_dims("sample")
        return np.asarray(regions.transpose("sample", "y", "x").values), {"sample": regions["sample"].values} if "sample" in regions.coords else {}
    array = np.asarray(regions)
    return (array[None] if array.ndim == 2 else array), {}


def _features_array(pixel_features: Any) -> np.ndarray:
    if isinstance(pixel_features, xr.DataArray):
        if "sample" not in pixel_features.dims:
            pixel_features = pixel_features.expand_dims("sample")
        pixel_features = pixel_features.transpose("sample", "y", "x", ...).values
    array = np.asarray(pixel_features, dtype=np.float64)
    return array[None] if array.ndim == 3 else array


def region_features(regions: Any, pixel_features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean pixel feature of every region of every sample.

    Region labels on another grid than the features are brought to the feature grid
    by nearest neighbour (:func:`interpret_spectral.segmentation.upsample_labels`).

    Parameters
    ----------
    regions : array-like or xarray.DataArray
        ``(sample, y, x)`` (or ``(y, x)``) integer region labels ``>= 0``.
    pixel_features : array-like or xarray.DataArray
        ``(sample, y, x, feature)`` (or ``(y, x, feature)``).

    Returns
    -------
    means : numpy.ndarray
        ``(sample, regions, feature)``, region ``r`` at row ``r`` (zeros where absent).
    present : numpy.ndarray
        ``(sample, regions)`` bool, the region occurs in that sample.

    Examples
    --------
    >>> import numpy as np
    >>> means, present = region_features(np.array([[0, 1, 1]]), np.array([[[2.0], [4], [6]]]))
    >>> means[0, :, 0].tolist(), present.tolist()
    ([2.0, 5.0], [[True, True]])
    """
    labels, _ = _regions_array(regions)
    features = _features_array(pixel_features)
    if labels.ndim != 3 or features.ndim != 4:
        raise ValueError(f"regions must be (sample, y, x) and features (sample, y, x, feature); got "
                         f"{labels.shape} and {features.shape}")
    if len(labels) != len(features):
        raise ValueError(f"{len(labels)} region maps for {len(features)} feature maps")
    if labels.min() < 0:
        raise ValueError("region labels must be >= 0")
    if labels.shape[1:] != features.shape[1:3]:
        labels = np.asarray(upsample_labels(labels, features.shape[1:3]))
    n_regions = int(labels.max()) + 1
    means = np.zeros((len(labels), n_regions, features.shape[-1]))
    present = np.zeros((len(labels), n_regions), dtype=bool)
    for i in range(len(labels)):
        flat = labels[i].reshape(-1)
        counts = np.bincount(flat, minlength=n_regions)
        np.add.at(means[i], flat, features[i].reshape(len(flat), -1))
        present[i] = counts > 0
        means[i][present[i]] /= counts[present[i], None]
    return means, present


def _class_scores(features: np.ndarray, text: np.ndarray, score: str, logit_scale: float) -> np.ndarray:
    """(..., classes) cosine similarity, or its softmax at ``logit_scale``."""
    norm = np.linalg.norm(features, axis=-1, keepdims=True)
    unit = features / np.where(norm > 0, norm, 1.0)
    text_unit = text / np.linalg.norm(text, axis=-1, keepdims=True)
    cosine = unit @ text_unit.T
    if score == "cosine":
        return cosine
    logits = logit_scale * cosine
    logits -= logits.max(axis=-1, keepdims=True)
    probability = np.exp(logits)
    return probability / probability.sum(axis=-1, keepdims=True)


def _text(text: Any, class_names: Sequence[str] | None, model: Any, tokenizer: Any,
          templates: Sequence[str]) -> np.ndarray:
    if text is not None:
        array = np.asarray(text, dtype=np.float64)
        if array.ndim != 2 or not np.all(np.linalg.norm(array, axis=1) > 0):
            raise ValueError(f"text embeddings must be (classes, dim) with non-zero rows, got shape {array.shape}")
        return array
    if class_names is None or model is None or tokenizer is None:
        raise ValueError("give text_embeddings, or class_names with a CLIP model and its tokenizer")
    return text_embeddings(class_names, model, tokenizer, templates).astype(np.float64)


def _check_score(score: str, threshold: float) -> None:
    if score not in ("softmax", "cosine"):
        raise ValueError(f"score must be 'softmax' or 'cosine', got {score!r}")
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must lie in [-1, 1] (a cosine or a probability), got {threshold}")


def zero_shot_segment(
    regions: Any,
    pixel_features: Any,
    text_embeddings: Any = None,
    *,
    class_names: Sequence[str] | None = None,
    model: Any = None,
    tokenizer: Any = None,
    templates: Sequence[str] = IMAGENET_TEMPLATES,
    threshold: float = 0.7,
    score: Literal["softmax", "cosine"] = "softmax",
    logit_scale: float = CLIP_LOGIT_SCALE,
) -> xr.DataArray:
    """Name every region by its most similar class, or background (Appendix D.1).

    Parameters
    ----------
    regions : array-like or xarray.DataArray
        ``(sample, y, x)`` region labels, e.g. ``segment(decompose(store, graph="vv"))``.
    pixel_features : array-like or xarray.DataArray
        ``(sample, y, x, feature)`` pixel features in CLIP's joint space
        (:func:`clip_pixel_features`).
    text_embeddings : array-like, optional
        ``(classes, feature)`` class embeddings; else computed from ``class_names``,
        ``model`` and ``tokenizer`` over ``templates`` (:func:`text_embeddings`).
    class_names, model, tokenizer, templates
        For computing the text embeddings.
    threshold : float
        A region whose best class scores at most this is background.
    score : {"softmax", "cosine"}
        Threshold CLIP's class probability ``softmax(logit_scale * cosine)`` or the cosine.
    logit_scale : float
        Softmax temperature (CLIP's 100).

    Returns
    -------
    xarray.DataArray
        ``(sample, y, x)`` int32 on the feature grid: 0 background, ``c + 1`` class ``c``;
        attrs record the settings.

    Examples
    --------
    >>> import numpy as np
    >>> regions = np.array([[0, 0, 1, 1]])
    >>> features = np.array([[[1.0, 0.1], [1, 0.1], [0.5, 0.5], [0.5, 0.5]]])
    >>> text = np.array([[1.0, 0], [0, 1]])
    >>> zero_shot_segment(regions, features, text, threshold=0.8, score="cosine").values[0].tolist()
    [[1, 1, 0, 0]]
    """
    _check_score(score, threshold)
    text = _text(text_embeddings, class_names, model, tokenizer, templates)
    labels, coords = _regions_array(regions)
    features = _features_array(pixel_features)
    if features.shape[-1] != text.shape[-1]:
        raise ValueError(f"pixel features have {features.shape[-1]} dims but text embeddings {text.shape[-1]}: "
                         "map the features into CLIP's joint space first (clip_pixel_features)")
    means, present = region_features(labels, features)
    scores = _class_scores(means, text, score, logit_scale)  # (sample, regions, classes)
    best = scores.argmax(axis=-1)
    named = np.where(scores.max(axis=-1) > threshold, best + 1, 0).astype(np.int32)
    named[~present] = 0
    grid = labels if labels.shape[1:] == features.shape[1:3] else np.asarray(upsample_labels(labels, features.shape[1:3]))
    out = np.take_along_axis(named, grid.reshape(len(grid), -1), axis=1).reshape(grid.shape)
    return xr.DataArray(out, dims=("sample", "y", "x"), coords=coords, name="labels",
                        attrs={"method": "zero_shot_regions", "threshold": float(threshold), "score": score,
                               "logit_scale": float(logit_scale), "n_classes": int(text.shape[0]),
                               "labels": "0 background, c + 1 class c"})


def maskclip_segment(pixel_features: Any, text_embeddings: Any = None, **options: Any) -> xr.DataArray:
    """The MaskCLIP baseline: every pixel takes its most similar class, or background.

    :func:`zero_shot_segment` with every pixel its own region; the keyword-only
    options (``class_names``, ``model``, ``tokenizer``, ``templates``, ``threshold``,
    ``score``, ``logit_scale``) are its own, with its defaults.

    Examples
    --------
    >>> import numpy as np
    >>> features = np.array([[[1.0, 0], [0.6, 0.8], [0, 1]]])
    >>> maskclip_segment(features, np.eye(2), threshold=0.7, score="cosine").values[0].tolist()
    [[1, 2, 2]]
    """
    features = _features_array(pixel_features)
    n, h, w = features.shape[:3]
    every_pixel = np.broadcast_to(np.arange(h * w).reshape(h, w), (n, h, w))
    coords = {"sample": pixel_features["sample"].values} if isinstance(pixel_features, xr.DataArray) and "sample" in pixel_features.coords else {}
    labels = zero_shot_segment(xr.DataArray(every_pixel, dims=("sample", "y", "x"), coords=coords), features,
                               text_embeddings, **options)
    labels.attrs["method"] = "maskclip_pixels"
    return labels


# help() and generated API docs show zero_shot_segment's options, which maskclip_segment passes on.
maskclip_segment.__signature__ = inspect.signature(zero_shot_segment).replace(  # type: ignore[attr-defined]
    parameters=list(inspect.signature(zero_shot_segment).parameters.values())[1:]
)


def semantic_miou(pred: Any, gt: Any, n_classes: int, ignore_index: int = 255) -> tuple[float, np.ndarray]:
    """Mean IoU of class-id predictions against class-id ground truth (no matching).

    Parameters
    ----------
    pred, gt : array-like or sequence of array-like
        Label maps of identical shapes; ``pred`` ids in ``[0, n_classes)``.
    n_classes : int
        Number of classes (background included).
    ignore_index : int
        Ground-truth value of unscored pixels.

    Returns
    -------
    miou : float
        Mean over the classes present in the ground truth or predicted.
    iou : numpy.ndarray
        ``(n_classes,)`` IoU per class, NaN where the class is neither present nor predicted.

    Examples
    --------
    >>> import numpy as np
    >>> semantic_miou(np.array([[0, 1, 1, 1]]), np.array([[0, 1, 1, 255]]), n_classes=2)[0]
    1.0
    """
    from interpret_spectral.evaluation.metrics import ConfusionAccumulator

    accumulator = ConfusionAccumulator(n_classes=n_classes, n_clusters=n_classes, ignore_index=ignore_index)
    accumulator.update(pred, gt)
    confusion = accumulator.confusion.astype(np.float64)  # (predicted, true)
    tp = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return float(np.nanmean(iou)), iou

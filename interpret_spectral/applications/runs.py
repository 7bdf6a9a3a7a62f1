"""The two applications end to end on a store: what the CLI commands and the examples run.

- :func:`score_instances`: proposals of ours (Appendix D.2), TokenCut and MaskCut on
  a store, scored against COCO annotations (class-agnostic AP / AR by pycocotools);
- :func:`zero_shot_labels`: ours (regions of the decomposition named by CLIP) and
  MaskCLIP (per pixel) on a store of a CLIP model.

Examples
--------
>>> table = score_instances(store, load_annotations("annotations.json"))  # doctest: +SKIP
>>> print(format_instance_table(table))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from interpret_spectral.applications.instances import InstanceProposals, instance_proposals, labels_to_proposals
from interpret_spectral.applications.zero_shot import (
    IMAGENET_TEMPLATES,
    clip_pixel_features,
    maskclip_segment,
    text_embeddings,
    zero_shot_segment,
)
from interpret_spectral.evaluation.coco import evaluate_instances, proposals_to_results
from interpret_spectral.store.reader import sample_ids

__all__ = [
    "INSTANCE_METHODS",
    "image_sizes_for",
    "instance_methods",
    "score_instances",
    "format_instance_table",
    "zero_shot_labels",
]

#: Proposal methods of the instance table: ours, TokenCut (MaskCut's first cut at tau 0.2), MaskCut (3 cuts, tau 0.15).
INSTANCE_METHODS = ("ours", "tokencut", "maskcut")


def image_sizes_for(ids: Sequence[str], ground_truth: Mapping[str, Any]) -> list[tuple[int, int]]:
    """``(H, W)`` of every sample id from COCO annotations (matched by file name or file stem).

    Examples
    --------
    >>> gt = {"images": [{"id": 0, "file_name": "images/a.jpg", "height": 4, "width": 6}]}
    >>> image_sizes_for(["a"], gt)
    [(4, 6)]
    """
    sizes: dict[str, tuple[int, int]] = {}
    for image in ground_truth["images"]:
        name = str(image.get("file_name", image["id"]))
        sizes[name] = sizes[Path(name).stem] = (int(image["height"]), int(image["width"]))
    missing = [i for i in ids if i not in sizes]
    if missing:
        raise KeyError(f"samples {missing[:5]} are not among the annotated images; the store's sample ids must be "
                       "the images' file stems (probe the annotation file's images)")
    return [sizes[i] for i in ids]


def instance_methods(
    store: xr.DataTree,
    image_sizes: Sequence[tuple[int, int]] | None,
    methods: Iterable[str] = INSTANCE_METHODS,
    graph: str = "qk",
    n_components: int = 10,
    k_range: Iterable[int] = range(2, 11),
    center_keys: bool = True,
    progress: bool = False,
    decomposition: xr.Dataset | None = None,
) -> dict[str, list[InstanceProposals]]:
    """Proposals of every method on every sample of a store.

    ``center_keys`` centres the final keys before the TokenCut / MaskCut graphs (needed
    for DINOv2, whose keys share one large component that makes the binarised graph
    complete; see :func:`interpret_spectral.segmentation.maskcut`).

    Examples
    --------
    >>> proposals = instance_methods(store, sizes, methods=["ours"])  # doctest: +SKIP
    """
    from interpret_spectral.segmentation import maskcut

    proposals: dict[str, list[InstanceProposals]] = {}
    for method in methods:
        if method == "ours":
            if decomposition is None:
                from interpret_spectral.spectral.decompose import decompose

                decomposition = decompose(store, graph=graph, n_components=n_components, progress=progress)
            proposals[method] = instance_proposals(decomposition, image_sizes, k_range=k_range)
        elif method == "tokencut":
            proposals[method] = labels_to_proposals(maskcut(store, n_masks=1, tau=0.2, center=center_keys), image_sizes)
        elif method == "maskcut":
            proposals[method] = labels_to_proposals(maskcut(store, n_masks=3, tau=0.15, center=center_keys),
                                                    image_sizes)
        else:
            raise ValueError(f"unknown proposal method {method!r}; choose from {INSTANCE_METHODS}")
    return proposals


def score_instances(
    store: xr.DataTree,
    ground_truth: Mapping[str, Any],
    methods: Iterable[str] = INSTANCE_METHODS,
    **options: Any,
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, list[InstanceProposals]]]:
    """Class-agnostic COCO scores of every method's proposals on a store's images.

    Parameters
    ----------
    store : xarray.DataTree
        A store of the annotated images (sample ids = image file stems).
    ground_truth : dict
        COCO annotations of those images.
    methods : iterable of str
        Among :data:`INSTANCE_METHODS`.
    **options
        Passed to :func:`instance_methods` (``graph``, ``n_components``, ...).

    Returns
    -------
    scores : dict
        ``{method: {"segm": {...}, "bbox": {...}}}`` (:func:`evaluate_instances`).
    proposals : dict
        ``{method: [InstanceProposals per sample]}``.

    Examples
    --------
    >>> scores, proposals = score_instances(store, ground_truth)  # doctest: +SKIP
    >>> scores["ours"]["segm"]["AR@100"]  # doctest: +SKIP
    """
    ids = sample_ids(store)
    sizes = image_sizes_for(ids, ground_truth)
    proposals = instance_methods(store, sizes, methods, **options)
    scores = {}
    for method, found in proposals.items():
        results = proposals_to_results({p.sample: (list(p.masks), list(p.scores)) for p in found}, ground_truth)
        scores[method] = evaluate_instances(ground_truth, results)
    return scores, proposals


def format_instance_table(scores: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """A markdown table of :func:`score_instances` scores, one row per method and IoU type.

    Examples
    --------
    >>> row = {"AP": 0.5, "AP50": 1.0, "AP75": 0.0, "AR@1": 0.5, "AR@10": 1.0, "AR@100": 1.0}
    >>> print(format_instance_table({"ours": {"segm": row}}).splitlines()[2])
    | ours | segm | 0.500 | 1.000 | 0.000 | 0.500 | 1.000 | 1.000 |
    """
    from interpret_spectral.evaluation.coco import COCO_METRICS

    lines = ["| method | type | " + " | ".join(COCO_METRICS) + " |", "|---|---|" + "---|" * len(COCO_METRICS)]
    for method, by_type in scores.items():
        for iou_type, values in by_type.items():
            lines.append(f"| {method} | {iou_type} | " + " | ".join(f"{values[m]:.3f}" for m in COCO_METRICS) + " |")
    return "\n".join(lines)


def zero_shot_labels(
    store: xr.DataTree,
    model: Any,
    tokenizer: Any,
    class_names: Sequence[str],
    graph: str = "vv",
    n_components: int = 10,
    k: int | None = None,
    threshold: float = 0.7,
    score: str = "softmax",
    path: str = "maskclip",
    templates: Sequence[str] = IMAGENET_TEMPLATES,
    progress: bool = False,
) -> dict[str, xr.DataArray]:
    """Ours (decomposition regions named by CLIP) and MaskCLIP (per pixel) labels on a CLIP store.

    Returns
    -------
    dict
        ``{"ours": labels, "maskclip": labels}``, ``(sample, y, x)`` on the token grid:
        0 background, ``c + 1`` class ``c``.

    Examples
    --------
    >>> labels = zero_shot_labels(store, clip, tokenizer, VOC_CLASSES)  # doctest: +SKIP
    """
    from interpret_spectral.segmentation import segment
    from interpret_spectral.spectral.decompose import decompose

    features = clip_pixel_features(store, model, path=path)  # type: ignore[arg-type]
    text = text_embeddings(class_names, model, tokenizer, templates)
    regions = segment(decompose(store, graph=graph, n_components=n_components, progress=progress), k=k)
    common = {"threshold": threshold, "score": score}
    return {
        "ours": zero_shot_segment(regions, features, text, **common),  # type: ignore[arg-type]
        "maskclip": maskclip_segment(features, text, **common),  # type: ignore[arg-type]
    }

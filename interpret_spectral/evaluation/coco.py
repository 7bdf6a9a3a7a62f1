"""Class-agnostic COCO evaluation of instance proposals (AP, AP50, AP75, AR@1/10/100, masks and boxes).

The numbers come from ``pycocotools``' ``COCOeval`` (nothing is computed by hand):
every ground-truth instance and every proposal is put in one category
``"object"``, as in the unsupervised instance segmentation literature (CutLER,
and the paper's Table 8).  Install with ``pip install 'interpret-spectral[coco]'``.

Examples
--------
>>> import numpy as np
>>> mask = np.zeros((8, 8), bool); mask[2:6, 2:6] = True
>>> gt = ground_truth_from_masks({"img": [mask]})
>>> results = proposals_to_results({"img": ([mask], [0.9])}, gt)
>>> round(evaluate_instances(gt, results)["segm"]["AP"], 6)
1.0
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "COCO_METRICS",
    "load_annotations",
    "class_agnostic",
    "ground_truth_from_masks",
    "mask_to_rle",
    "proposals_to_results",
    "evaluate_instances",
]

#: The reported metrics, in the order of ``COCOeval.stats`` positions used.
COCO_METRICS: dict[str, int] = {"AP": 0, "AP50": 1, "AP75": 2, "AR@1": 6, "AR@10": 7, "AR@100": 8}
_OBJECT = {"id": 1, "name": "object", "supercategory": "object"}


def _pycocotools() -> Any:
    try:
        from pycocotools import mask as mask_utils
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "COCO evaluation needs pycocotools: pip install 'interpret-spectral[coco]'"
        ) from error
    return mask_utils


def load_annotations(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a COCO-format annotation file (``images``, ``annotations``, ``categories``).

    Examples
    --------
    >>> data = load_annotations("instances/annotations.json")  # doctest: +SKIP
    >>> len(data["images"])  # doctest: +SKIP
    3
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no COCO annotation file at {path}")
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    missing = [key for key in ("images", "annotations") if key not in data]
    if missing:
        raise ValueError(f"{path} is not a COCO annotation file: it lacks {missing}")
    return data


def class_agnostic(annotations: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of COCO annotations with every instance in the one category ``object`` (id 1).

    Annotation ids are renumbered 1..n: ``COCOeval`` takes id 0 for "unmatched", so a
    file whose ids start at 0 (labelme's export does) would lose that instance.

    Examples
    --------
    >>> data = {"images": [{"id": 0, "height": 4, "width": 4}],
    ...         "annotations": [{"id": 5, "image_id": 0, "category_id": 15, "bbox": [0, 0, 2, 2],
    ...                          "area": 4, "iscrowd": 0, "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]}]}
    >>> class_agnostic(data)["annotations"][0]["category_id"]
    1
    """
    data = copy.deepcopy(dict(annotations))
    for number, annotation in enumerate(data["annotations"], start=1):
        # COCOeval marks an unmatched detection by ground-truth id 0: ids must start at 1.
        annotation["id"] = number
        annotation["category_id"] = _OBJECT["id"]
        annotation.setdefault("iscrowd", 0)
    data["categories"] = [dict(_OBJECT)]
    data.setdefault("info", {})
    data.setdefault("licenses", [])
    return data


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO run-length encoding of one boolean ``(H, W)`` mask (``counts`` as str, JSON-ready).

    Examples
    --------
    >>> import numpy as np
    >>> mask_to_rle(np.ones((2, 3), bool))["size"]
    [2, 3]
    """
    mask_utils = _pycocotools()
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {array.shape}")
    rle = mask_utils.encode(np.asfortranarray(array.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def ground_truth_from_masks(instances: Mapping[str, Sequence[np.ndarray]]) -> dict[str, Any]:
    """Class-agnostic COCO ground truth from boolean instance masks per image.

    Parameters
    ----------
    instances : mapping of str to sequence of numpy.ndarray
        Image name -> its ``(H, W)`` boolean instance masks (all of one image's size).

    Returns
    -------
    dict
        COCO annotations; image ids ``0..n-1`` in the mapping's order, ``file_name`` the name.

    Examples
    --------
    >>> import numpy as np
    >>> gt = ground_truth_from_masks({"a": [np.eye(3, dtype=bool)]})
    >>> gt["annotations"][0]["bbox"], gt["annotations"][0]["area"]
    ([0.0, 0.0, 3.0, 3.0], 3)
    """
    mask_utils = _pycocotools()
    images, annotations = [], []
    for image_id, (name, masks) in enumerate(instances.items()):
        masks = [np.asarray(m, dtype=bool) for m in masks]
        if not masks:
            raise ValueError(f"image {name!r} has no instance mask")
        shape = masks[0].shape
        if any(m.shape != shape for m in masks):
            raise ValueError(f"the instance masks of image {name!r} differ in size")
        images.append({"id": image_id, "file_name": str(name), "height": int(shape[0]), "width": int(shape[1])})
        for mask in masks:
            if not mask.any():
                raise ValueError(f"image {name!r} has an empty ground-truth mask")
            rle = mask_to_rle(mask)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                "segmentation": rle, "area": int(mask.sum()),
                "bbox": [float(v) for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))],
            })
    return class_agnostic({"images": images, "annotations": annotations})


def _image_ids(ground_truth: Mapping[str, Any]) -> dict[str, int]:
    """Image id by ``file_name`` and by file stem."""
    ids: dict[str, int] = {}
    for image in ground_truth["images"]:
        name = str(image.get("file_name", image["id"]))
        ids[name] = int(image["id"])
        ids[Path(name).stem] = int(image["id"])
    return ids


def proposals_to_results(
    proposals: Mapping[str, tuple[Sequence[np.ndarray], Sequence[float]]],
    ground_truth: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """COCO result entries (``segmentation`` RLE, ``bbox``, ``score``) of masks with scores.

    Parameters
    ----------
    proposals : mapping of str to (masks, scores)
        Image name (its ``file_name`` in ``ground_truth`` or that name's stem) -> its
        boolean ``(H, W)`` masks at the image's size and their scores.
    ground_truth : dict
        The COCO annotations the results are for (names are looked up there).

    Returns
    -------
    list of dict
        One entry per mask, ``category_id`` 1 (class-agnostic), boxes ``[x, y, w, h]``
        from the masks (pycocotools ``toBbox``).

    Examples
    --------
    >>> import numpy as np
    >>> gt = ground_truth_from_masks({"a": [np.eye(3, dtype=bool)]})
    >>> proposals_to_results({"a": ([np.eye(3, dtype=bool)], [0.5])}, gt)[0]["bbox"]
    [0.0, 0.0, 3.0, 3.0]
    """
    mask_utils = _pycocotools()
    ids = _image_ids(ground_truth)
    sizes = {int(image["id"]): (int(image["height"]), int(image["width"])) for image in ground_truth["images"]}
    results: list[dict[str, Any]] = []
    for name, (masks, scores) in proposals.items():
        key = name if name in ids else Path(str(name)).stem
        if key not in ids:
            raise KeyError(f"image {name!r} is not in the ground truth (its images: {sorted(ids)[:6]} ...)")
        image_id = ids[key]
        if len(masks) != len(scores):
            raise ValueError(f"image {name!r}: {len(masks)} masks but {len(scores)} scores")
        for mask, score in zip(masks, scores):
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != sizes[image_id]:
                raise ValueError(
                    f"image {name!r}: a mask of shape {mask.shape} for an image of size {sizes[image_id]}; "
                    "upsample the proposals to the image size first"
                )
            rle = mask_to_rle(mask)
            encoded = dict(rle, counts=rle["counts"].encode("ascii"))
            results.append({
                "image_id": image_id, "category_id": 1, "segmentation": rle, "score": float(score),
                "bbox": [float(v) for v in mask_utils.toBbox(encoded)],
            })
    return results


def evaluate_instances(
    ground_truth: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    iou_types: Sequence[str] = ("segm", "bbox"),
) -> dict[str, dict[str, float]]:
    """Class-agnostic COCO AP / AR of results against ground truth, by ``pycocotools.cocoeval``.

    Parameters
    ----------
    ground_truth : dict
        COCO annotations (any categories: they are made class-agnostic here).
    results : sequence of dict
        COCO result entries (:func:`proposals_to_results`).
    iou_types : sequence of {"segm", "bbox"}
        Mask and/or box evaluation.

    Returns
    -------
    dict
        ``{"segm": {"AP": ..., "AP50": ..., "AP75": ..., "AR@1": ..., "AR@10": ...,
        "AR@100": ...}, "bbox": {...}}``: ``COCOeval.stats`` at those positions (AR at
        ``maxDets`` 1, 10, 100).  With no result at all every number is 0.0 (COCO's
        ``loadRes`` refuses an empty list).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((10, 10), bool); a[:5, :5] = True
    >>> b = np.zeros((10, 10), bool); b[5:, 5:] = True
    >>> gt = ground_truth_from_masks({"x": [a, b]})
    >>> r = evaluate_instances(gt, proposals_to_results({"x": ([a], [1.0])}, gt), iou_types=("segm",))
    >>> r["segm"]["AR@100"], round(r["segm"]["AP"], 3)
    (0.5, 0.505)
    """
    _pycocotools()
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    for iou_type in iou_types:
        if iou_type not in ("segm", "bbox"):
            raise ValueError(f"iou_types must be 'segm' and/or 'bbox', got {iou_type!r}")
    data = class_agnostic(ground_truth)
    if not data["annotations"]:
        raise ValueError("the ground truth has no instance: nothing to evaluate against")
    scores: dict[str, dict[str, float]] = {}
    if not results:
        return {iou_type: {name: 0.0 for name in COCO_METRICS} for iou_type in iou_types}
    entries = [dict(r, category_id=1) for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = data
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(entries)
        for iou_type in iou_types:
            evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
            evaluator.params.maxDets = [1, 10, 100]
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            scores[iou_type] = {name: float(evaluator.stats[i]) for name, i in COCO_METRICS.items()}
    return scores

"""``interpret-spectral zero-shot``: zero-shot semantic segmentation with CLIP (paper D.1).

Regions from the decomposition of a CLIP model's vision tower are named by its text
tower (prompt ensembles); MaskCLIP (per pixel) is the baseline.  With a segmentation
folder (``images/``, ``masks/``, ``classes.txt``), both are scored by mIoU.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from interpret_spectral.cli.common import UsageError, add_common, positive_int

__all__ = ["add_parser", "run"]

logger = logging.getLogger("interpret_spectral.cli")
_VOC_RAW = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
            "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``zero-shot`` command."""
    parser = subparsers.add_parser(
        "zero-shot", help="zero-shot semantic segmentation with CLIP (paper D.1)",
        description="Decomposition regions of CLIP's vision tower named by its text tower; MaskCLIP per pixel as "
                    "the baseline; mIoU when the folder has masks.",
    )
    parser.add_argument("data", help="a segmentation folder (images/, masks/, classes.txt) or a folder of images")
    parser.add_argument("--clip", required=True,
                        help="a Hugging Face CLIPModel: a local folder or a cached repository id "
                             "(e.g. openai/clip-vit-base-patch16); nothing is downloaded")
    parser.add_argument("--classes", default="auto",
                        help="class names: auto (classes.txt minus its background, VOC names as prompts), voc, "
                             "a comma-separated list, or a text file with one name a line")
    parser.add_argument("--threshold", type=float, default=0.7, help="background below this score (default 0.7)")
    parser.add_argument("--score", choices=("softmax", "cosine"), default="softmax",
                        help="threshold CLIP's class probability (default) or the raw cosine")
    parser.add_argument("--features", choices=("maskclip", "value"), default="maskclip",
                        help="pixel features: MaskCLIP's value path with residual and MLP (default) or out_proj only")
    parser.add_argument("--graph", default="vv", help="decomposition graph of the regions (default vv, 'what')")
    parser.add_argument("--n-components", type=positive_int, default=10, help="eigenvectors per image (default 10)")
    parser.add_argument("--k", type=positive_int, default=None, help="regions per image (default: chosen per image)")
    parser.add_argument("--image-size", type=positive_int, default=None, help="input size (default: the model's)")
    parser.add_argument("--limit", type=positive_int, default=None, help="use the first N images only")
    parser.add_argument("--out", "-o", default=None, help="folder for summary.json and label PNGs")
    add_common(parser)
    return parser


def _class_names(spec: str, folder_classes: list[str] | None) -> list[str]:
    from interpret_spectral.applications.zero_shot import VOC_CLASSES

    if spec == "voc":
        return list(VOC_CLASSES)
    if spec == "auto":
        if folder_classes is None:
            raise UsageError("--classes auto needs a folder with classes.txt; give --classes voc, a list or a file")
        names = folder_classes[1:]
        return list(VOC_CLASSES) if tuple(names) == _VOC_RAW else names
    path = Path(spec).expanduser()
    names = path.read_text().split("\n") if path.is_file() else spec.split(",")
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UsageError(f"--classes {spec!r} names no class")
    return names


def run(args: argparse.Namespace) -> int:
    """Probe the CLIP model, label regions and pixels, score them when masks exist, write files."""
    import numpy as np
    from PIL import Image

    from interpret_spectral import probe
    from interpret_spectral.applications.runs import zero_shot_labels
    from interpret_spectral.applications.zero_shot import load_clip, semantic_miou
    from interpret_spectral.evaluation.folders import IMAGE_SUFFIXES, SegmentationFolder
    from interpret_spectral.segmentation import upsample_labels

    root = Path(args.data).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of images")
    out = Path(args.out).expanduser() if args.out else None
    if out is not None and out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new --out folder")
    masks: list[np.ndarray] | None = None
    folder_classes: list[str] | None = None
    if (root / "classes.txt").is_file() and (root / "masks").is_dir():
        folder = SegmentationFolder(root)
        samples = folder[: args.limit] if args.limit else folder[:]
        ids, images, masks = [s.id for s in samples], [s.image for s in samples], [s.mask for s in samples]
        folder_classes = list(folder.classes)
    else:
        image_dir = root / "images" if (root / "images").is_dir() else root
        paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: args.limit]
        if not paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
        ids, images = [p.stem for p in paths], [Image.open(p).convert("RGB") for p in paths]
    names = _class_names(args.classes, folder_classes)
    if folder_classes is not None and len(names) != len(folder_classes) - 1:
        raise UsageError(f"{len(names)} class names for the folder's {len(folder_classes) - 1} non-background "
                         "classes: give them in classes.txt order")
    model, tokenizer = load_clip(args.clip)
    options = {"image_size": args.image_size} if args.image_size else {}
    store = probe(model, images, capture=("q", "k", "v", "features"), sample_ids=ids, progress=not args.quiet,
                  **options)
    labels = zero_shot_labels(store, model, tokenizer, names, graph=args.graph, n_components=args.n_components,
                              k=args.k, threshold=args.threshold, score=args.score, path=args.features,
                              progress=not args.quiet)
    sizes = [(img.height, img.width) for img in images]
    full = {method: upsample_labels(np.asarray(grid.values), sizes) for method, grid in labels.items()}
    summary: dict[str, Any] = {"clip": str(args.clip), "classes": names, "threshold": args.threshold,
                               "score": args.score, "features": args.features, "graph": args.graph,
                               "images": ids, "labels": "0 background, c + 1 class c"}
    if masks is not None:
        for method, predicted in full.items():
            miou, iou = semantic_miou(predicted, masks, n_classes=len(names) + 1)
            summary[f"miou_{method}"] = miou
            summary[f"iou_{method}"] = [None if np.isnan(v) else float(v) for v in iou]
            print(f"{method}: mIoU {miou:.3f} over {len(ids)} images")
    else:
        print(f"labelled {len(ids)} images (no masks: nothing to score)")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for method, maps in full.items():
            for sample, labelled in zip(ids, maps):
                Image.fromarray(labelled.astype(np.uint8)).save(out / f"{sample}_{method}.png")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        logger.info("wrote %s", out)
    return 0

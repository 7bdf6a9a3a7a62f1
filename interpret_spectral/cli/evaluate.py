"""``interpret-spectral evaluate``: score segments against a masks folder (oracle and matched mIoU)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from interpret_spectral.cli.common import (
    UsageError,
    add_common,
    add_k,
    add_model,
    add_spectral,
    check_model_args,
    check_solver,
    load,
    model_options,
    parse_graphs,
    parse_k_range,
    parse_layers,
    positive_int,
    probe_options,
)

__all__ = ["add_parser", "run"]

logger = logging.getLogger("interpret_spectral.cli")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` command."""
    parser = subparsers.add_parser(
        "evaluate", help="score segments against a masks folder (oracle mIoU, optionally matched mIoU)",
        description="Score against a segmentation folder (classes.txt, images/, masks/): either labels from "
                    "`segment` (--labels) or a fresh run of the model on its images.",
    )
    parser.add_argument("data", help="folder with classes.txt, images/ and masks/")
    parser.add_argument("--labels", default=None, help="a labels file from segment (sample ids = image file stems)")
    parser.add_argument("--limit", type=positive_int, default=None, help="score the first N images only")
    parser.add_argument("--matched", action="store_true",
                        help="also the dataset-level matched mIoU: one joint decomposition, K-Means with K = classes, "
                             "Hungarian matching")
    parser.add_argument("--json", default=None, help="write the scores to this JSON file")
    add_model(parser, with_timesteps=True)
    add_spectral(parser, multi_graph=False)
    add_k(parser)
    add_common(parser)
    return parser


def _masks_for(folder: Any, ids: list[str]) -> list[Any]:
    index = {sid: i for i, sid in enumerate(folder.ids)}
    missing = [sid for sid in ids if sid not in index]
    if missing:
        raise ValueError(
            f"labels for {missing[:5]} have no mask in {folder.root / 'masks'}; the sample ids must be the image file stems"
        )
    return [folder[index[sid]].mask for sid in ids]


def run(args: argparse.Namespace) -> int:
    """Score labels (from a file, or from a fresh run of the model) against the folder's masks."""
    import numpy as np

    from interpret_spectral.evaluation.folders import SegmentationFolder
    from interpret_spectral.evaluation.metrics import matched_miou, oracle_miou_per_image
    from interpret_spectral.segmentation import upsample_labels

    if args.matched and args.labels:
        raise UsageError("--matched decomposes the dataset jointly; it cannot be combined with --labels")
    k_range = parse_k_range(args.k_range)
    data = SegmentationFolder(Path(args.data).expanduser())
    result: dict[str, Any] = {"data": str(data.root), "classes": len(data.classes)}
    store = decomposition = None
    if args.labels:
        from interpret_spectral.store.results import open_labels

        labels = open_labels(args.labels)
        ids = [str(s) for s in labels["sample"].values][: args.limit or None]
        labels = labels.isel(sample=slice(0, len(ids)))
        result["labels"] = str(args.labels)
        source = f"labels from {args.labels}"
    else:
        from interpret_spectral.capture.engine import probe
        from interpret_spectral.models.loaders import model_label
        from interpret_spectral.pipeline import segment_each
        from interpret_spectral.spectral.decompose import decompose

        (graph,) = parse_graphs(args.graph, multi=False)
        check_solver(args.solver)
        layers = parse_layers(args.layers)
        check_model_args(args)
        ids = data.ids[: args.limit or None]
        model, spec = load(args)
        images = [data[data.ids.index(sid)].image for sid in ids]
        store = probe(model, images, sample_ids=ids, layers=layers, batch_size=args.batch_size,
                      progress=not args.quiet, **model_options(args, spec.kind), **probe_options(args))
        decomposition = decompose(store, graph=graph, n_components=args.n_components, solver=args.solver,
                                  seed=args.seed, device=args.device, progress=not args.quiet)
        options: dict[str, Any] = {"k": args.k, "seed": args.seed}
        if k_range is not None:
            options["k_range"] = k_range
        if args.k_method is not None:
            options["k_method"] = args.k_method
        labels = segment_each(decomposition, progress=not args.quiet, **options)
        source = f"{graph.upper()} {args.solver}, {model_label(spec)}"
        result.update({"model": model_label(spec), "graph": graph, "solver": args.solver,
                       "n_components": args.n_components})
    masks = _masks_for(data, ids)
    predictions = upsample_labels(labels.transpose("sample", "y", "x"), [m.shape for m in masks])
    per_image = oracle_miou_per_image(predictions, masks)
    scored = per_image[np.isfinite(per_image)]
    if scored.size == 0:
        raise ValueError("no image has a scored (non-ignore) ground-truth pixel")
    result["images"] = ids
    result["oracle_miou"] = round(float(scored.mean()), 4)
    result["oracle_miou_per_image"] = {
        sid: (None if not np.isfinite(v) else round(float(v), 4)) for sid, v in zip(ids, per_image)
    }
    if not args.labels:
        source += f"; k per image: {labels.attrs.get('k_selection') if args.k is None else args.k}"
    print(f"oracle mIoU: {result['oracle_miou']:.4f} over {scored.size} images ({source})")
    for sid, value in result["oracle_miou_per_image"].items():
        logger.info(f"  {sid}: {'n/a' if value is None else f'{value:.4f}'}")
    if args.matched:
        from interpret_spectral.pipeline import dataset_kmeans
        from interpret_spectral.spectral.dataset import decompose_dataset

        n_clusters = args.k or len(data.classes)
        logger.info(f"dataset-level decomposition of {len(ids)} images ...")
        joint = decompose_dataset(store, graph=result["graph"], n_components=args.n_components, solver="exact",
                                  grid=int(decomposition.sizes["y"]), seed=args.seed, progress=not args.quiet)
        joint_labels = upsample_labels(dataset_kmeans(joint, n_clusters, args.seed), [m.shape for m in masks])
        matched = matched_miou(joint_labels, masks, n_classes=len(data.classes), n_clusters=n_clusters)
        result["matched_miou"] = round(float(matched.miou), 4)
        result["matched_pixel_accuracy"] = round(float(matched.pixel_accuracy), 4)
        print(f"matched mIoU (dataset-level {result['graph'].upper()}, {n_clusters} clusters, Hungarian): "
              f"{result['matched_miou']:.4f}; pixel accuracy {result['matched_pixel_accuracy']:.4f}")
    if args.json:
        from interpret_spectral.store.atomic import replacing_file

        with replacing_file(Path(args.json).expanduser()) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
        logger.info(f"wrote {args.json}")
    return 0

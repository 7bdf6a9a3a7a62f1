"""``interpret-spectral evaluate``: score segments against a masks folder (oracle and matched mIoU), streamed."""

from __future__ import annotations

import argparse
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
        description="Score against a segmentation folder (images/ and masks/; classes.txt only names the classes): "
                    "either labels made earlier (--labels) or a fresh run of the model on its images, a few images "
                    "at a time (memory does not grow with the number of images). With --out, writes per image "
                    "labels/<id>.nc and figures/<id>_segments.png, and summary.json.",
    )
    parser.add_argument("data", help="folder with images/ and masks/ (and optionally classes.txt)")
    parser.add_argument("--out", "-o", default=None,
                        help="folder for labels/, figures/ and summary.json (default: print the scores only)")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier evaluate in --out")
    parser.add_argument("--no-figures", action="store_true", help="write no figures into --out")
    parser.add_argument("--labels", default=None,
                        help="score labels made earlier: a labels file of segment/analyze, or the labels/ folder of "
                             "an earlier evaluate (sample ids = image file stems)")
    parser.add_argument("--limit", type=positive_int, default=None, help="score the first N images only")
    parser.add_argument("--matched", action="store_true",
                        help="also the dataset-level matched mIoU: one joint decomposition of all images (written to "
                             "a temporary store on disk: its cross-image graphs need every image's features of a "
                             "site at once), K-Means with K = classes, Hungarian matching")
    parser.add_argument("--n-classes", type=positive_int, default=None,
                        help="classes of the matched mIoU (default: classes.txt, else the largest mask id + 1)")
    parser.add_argument("--json", default=None, help="also write the summary to this JSON file")
    add_model(parser, with_timesteps=True)
    add_spectral(parser, multi_graph=False)
    add_k(parser)
    add_common(parser)
    return parser


def _print_scores(summary: dict[str, Any], source: str) -> None:
    print(f"oracle mIoU: {summary['oracle_miou']:.4f} over {summary['scored']} images ({source})")
    worst = summary["oracle_miou_worst"]
    logger.info(f"worst image: {worst['image']} ({worst['oracle_miou']:.4f})")
    for sid, value in summary["oracle_miou_per_image"].items():
        logger.debug(f"  {sid}: {'n/a' if value is None else f'{value:.4f}'} (k = {summary['k'][sid]})")


def run(args: argparse.Namespace) -> int:
    """Score labels (from files, or from a fresh run of the model) against the folder's masks."""
    from interpret_spectral.evaluation.folders import SegmentationFolder

    if args.matched and args.labels:
        raise UsageError("--matched decomposes the dataset jointly; it cannot be combined with --labels")
    if args.n_classes is not None and not args.matched:
        raise UsageError("--n-classes is the class count of the matched mIoU; add --matched (oracle mIoU needs none)")
    k_range = parse_k_range(args.k_range)
    data = SegmentationFolder(Path(args.data).expanduser())
    out = Path(args.out).expanduser() if args.out else None
    figures = not args.no_figures
    if args.labels:
        from interpret_spectral.pipeline.evaluate import evaluate_labels

        summary = evaluate_labels(args.labels, data, out, limit=args.limit, figures=figures, overwrite=args.overwrite,
                                  json_path=args.json, progress=not args.quiet)
        _print_scores(summary, f"labels from {args.labels}")
    else:
        from interpret_spectral.models.loaders import model_label
        from interpret_spectral.pipeline import AnalyzeSettings
        from interpret_spectral.pipeline.evaluate import evaluate_model

        (graph,) = parse_graphs(args.graph, multi=False)
        check_solver(args.solver)
        layers = parse_layers(args.layers)
        spec = check_model_args(args)
        settings = AnalyzeSettings(graphs=(graph,), n_components=args.n_components, solver=args.solver, seed=args.seed,
                                   k=args.k, k_range=k_range, k_method=args.k_method, device=args.device)
        model, spec = load(args)
        summary = evaluate_model(
            model, data, out, settings=settings, limit=args.limit, layers=layers, batch_size=args.batch_size,
            matched=args.matched, n_classes=args.n_classes, figures=figures, overwrite=args.overwrite,
            json_path=args.json, model_name=model_label(spec), progress=not args.quiet,
            probe_options={**model_options(args, spec.kind), **probe_options(args)},
        )
        k = args.k if args.k is not None else summary["settings"].get("k_selection")
        _print_scores(summary, f"{graph.upper()} {args.solver}, {model_label(spec)}; k per image: {k}")
        if args.matched:
            matched = summary["matched"]
            print(f"matched mIoU (dataset-level {graph.upper()}, {matched['n_clusters']} clusters, "
                  f"{matched['matching'].capitalize()}): {matched['miou']:.4f}; pixel accuracy "
                  f"{matched['pixel_accuracy']:.4f}")
            for name, iou in matched["iou_per_class"].items():
                logger.info(f"  {name}: {'n/a' if iou is None else f'{iou:.4f}'}")
    if out is not None:
        logger.info(f"wrote {out / 'summary.json'}")
    if args.json:
        logger.info(f"wrote {args.json}")
    return 0

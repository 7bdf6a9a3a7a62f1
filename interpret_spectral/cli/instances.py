"""``interpret-spectral instances``: unsupervised instance proposals scored against COCO annotations.

The paper's Appendix D.2 (Table 8): our proposals (K-Means 2..10 on the eigenvectors,
Ward merging, silhouette scores), TokenCut and MaskCut, with class-agnostic COCO AP /
AR (pycocotools) for masks and boxes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from interpret_spectral.cli.common import UsageError, add_common, add_model, positive_int

__all__ = ["add_parser", "run"]

logger = logging.getLogger("interpret_spectral.cli")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``instances`` command."""
    parser = subparsers.add_parser(
        "instances", help="instance proposals + class-agnostic COCO AP/AR (paper D.2)",
        description="Instance proposals of ours, TokenCut and MaskCut on the images of a COCO annotation file, "
                    "scored class-agnostically by pycocotools (AP, AP50, AP75, AR@1/10/100, masks and boxes).",
    )
    parser.add_argument("data", help="a COCO annotation .json file, or a folder holding annotations.json; "
                                     "image file_names are relative to its folder")
    parser.add_argument("--store", default=None, help="an existing store of those images (sample ids = file stems) "
                                                      "instead of probing --model")
    parser.add_argument("--graph", default="qk", help="decomposition graph for ours: qk ('where', default) or vv")
    parser.add_argument("--n-components", type=positive_int, default=10, help="eigenvectors per image (default 10)")
    parser.add_argument("--methods", default="ours,tokencut,maskcut", help="comma-separated (default all three)")
    parser.add_argument("--no-center-keys", action="store_true",
                        help="TokenCut/MaskCut on the raw final keys (default: centred, needed for DINOv2)")
    parser.add_argument("--out", "-o", default=None, help="folder for scores.json and proposals_<method>.json")
    add_model(parser, with_timesteps=False)
    add_common(parser)
    return parser


def _annotation_file(data: str) -> Path:
    path = Path(data).expanduser()
    if path.is_dir():
        path = path / "annotations.json"
    if not path.is_file():
        raise FileNotFoundError(f"no COCO annotation file at {path}; give the .json file or its folder")
    return path


def run(args: argparse.Namespace) -> int:
    """Probe (or open) the store, make proposals, score them, print the table, write files."""
    from interpret_spectral.applications.runs import INSTANCE_METHODS, format_instance_table, score_instances
    from interpret_spectral.evaluation.coco import load_annotations, proposals_to_results

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(INSTANCE_METHODS))
    if unknown or not methods:
        raise UsageError(f"--methods takes some of {','.join(INSTANCE_METHODS)}; got {args.methods!r}")
    out = Path(args.out).expanduser() if args.out else None
    if out is not None and out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new --out folder")
    annotation_file = _annotation_file(args.data)
    ground_truth = load_annotations(annotation_file)
    if args.store:
        from interpret_spectral.store.reader import open_store

        store = open_store(Path(args.store).expanduser())
    else:
        from PIL import Image

        from interpret_spectral import probe
        from interpret_spectral.cli.common import load, model_options, probe_options

        paths = [annotation_file.parent / image["file_name"] for image in ground_truth["images"]]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"images named by {annotation_file} are missing: {missing[:3]}")
        model, spec = load(args)
        images = [Image.open(p).convert("RGB") for p in paths]
        store = probe(model, images, sample_ids=[p.stem for p in paths], batch_size=args.batch_size,
                      progress=not args.quiet, **probe_options(args), **model_options(args, spec.kind))
    scores, proposals = score_instances(store, ground_truth, methods=methods, graph=args.graph,
                                        n_components=args.n_components, center_keys=not args.no_center_keys,
                                        progress=not args.quiet)
    print(format_instance_table(scores))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        counts = {m: {p.sample: len(p) for p in found} for m, found in proposals.items()}
        (out / "scores.json").write_text(json.dumps({"scores": scores, "proposals": counts,
                                                     "annotations": str(annotation_file)}, indent=2))
        for method, found in proposals.items():
            results = proposals_to_results({p.sample: (list(p.masks), list(p.scores)) for p in found}, ground_truth)
            (out / f"proposals_{method}.json").write_text(json.dumps(results))
        logger.info("wrote %s", out)
    return 0

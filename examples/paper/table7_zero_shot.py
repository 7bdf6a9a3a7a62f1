"""Table 7 (Appendix D.1): zero-shot semantic segmentation on VOC with CLIP, ours vs MaskCLIP.

Regions come from the decomposition of CLIP ViT-B/16's attention (``--graph``, VV by
default) segmented per image; pixel features are the final attention layer's value
vectors through CLIP's projection (as MaskCLIP); each region takes the class whose
prompt-averaged text embedding is most similar, or background where no score exceeds
``--threshold`` (:func:`interpret_spectral.applications.runs.zero_shot_labels`).
MaskCLIP labels every pixel the same way without regions.  Scored by VOC mIoU (21
classes, background included).

The paper's numbers (ours 0.50, MaskCLIP 0.25) need the CLIP weights
(``openai/clip-vit-base-patch16`` in the local Hugging Face cache, or ``--weights``);
``--random-init`` runs random towers, whose names are chance.

Usage::

    python examples/paper/table7_zero_shot.py --images 13
    python examples/paper/table7_zero_shot.py --random-init --images 2
"""

from __future__ import annotations

import sys

import numpy as np

from _paper import SHARED, PaperRun, paper_parser, record, report, segmentation_samples
from interpret_spectral.applications.runs import zero_shot_labels
from interpret_spectral.applications.zero_shot import VOC_CLASSES, load_clip, semantic_miou
from interpret_spectral.paper import paper_settings
from interpret_spectral.paper.models import tiny_clip
from interpret_spectral.segmentation import upsample_labels


def main(argv: list[str] | None = None) -> None:
    parser = paper_parser(__doc__, out="out/paper/table7", data=SHARED / "voc", model="clip")
    parser.add_argument("--graph", default="vv", help="decomposition graph of the regions")
    parser.add_argument("--threshold", type=float, default=0.7, help="background below this score")
    parser.add_argument("--score", choices=("softmax", "cosine"), default="softmax")
    args = parser.parse_args(argv)
    settings = paper_settings(args.model)
    if settings["family"] != "clip":
        parser.error(f"Table 7 names regions with CLIP's text tower; --model {args.model} is {settings['family']}")
    size = args.image_size or (64 if args.random_init else settings["image_size"])
    if args.random_init:
        (clip, tokenizer), label = tiny_clip(size, args.seed), f"{settings['label']} (tiny random init)"
    else:
        source = args.weights or settings["model"].partition(":")[2]
        try:
            clip, tokenizer = load_clip(source)
        except (OSError, ValueError) as error:
            sys.exit(f"{error}\n(the CLIP weights are needed for Table 7's numbers; or run with --random-init)")
        label = f"CLIP {source}"
    run = PaperRun(args, settings, clip, label, int(size))
    samples = segmentation_samples(args)
    masks = [s.mask for s in samples]
    store = record(run, [s.image for s in samples], [s.id for s in samples], capture=("q", "k", "v", "features"))
    predictions = zero_shot_labels(store, clip, tokenizer, VOC_CLASSES, graph=args.graph,
                                   n_components=args.n_components, threshold=args.threshold, score=args.score)
    sizes = [m.shape for m in masks]
    rows = [[method, float(semantic_miou(upsample_labels(np.asarray(labels.values), sizes), masks, n_classes=21)[0])]
            for method, labels in predictions.items()]
    rows.append(["all background", float(semantic_miou([np.zeros_like(m) for m in masks], masks, n_classes=21)[0])])
    report(run, f"Table 7: zero-shot VOC mIoU on {len(samples)} image(s), threshold {args.threshold} ({args.score})",
           ["method", "VOC mIoU"], rows)


if __name__ == "__main__":
    main()

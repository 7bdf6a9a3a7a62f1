"""Figure 4: oracle mIoU on VOC against the number of segments K = 2..10, per model.

For every model given (``--model``, comma-separated; each with its Appendix B settings)
and every K, three rows are scored by oracle mIoU on the same images:

- ours + K-Means: multi-layer QK decomposition (``--solver``, exact by default), K-Means with K;
- NCut + K-Means: NCut on the final layer's attention (m = 15), K-Means with K;
- final-feature K-Means: K-Means with K on the final layer's tokens.

(Diffusion models have no final-layer tokens: only the first row.)  The plot goes to
``--out/figure4.png`` and the numbers to ``results.json``.

Usage::

    python examples/paper/figure4_k_sweep.py --images 4 --image-size 224
    python examples/paper/figure4_k_sweep.py --model dino,clip,mae,sd
    python examples/paper/figure4_k_sweep.py --random-init --model imgfocus,clip --images 2
"""

from __future__ import annotations

import argparse

import numpy as np

from _paper import SHARED, PaperRun, paper_parser, record, report, segmentation_samples, setup
from interpret_spectral.evaluation.metrics import oracle_miou_per_image
from interpret_spectral.segmentation import kmeans_features, ncut, segment, upsample_labels
from interpret_spectral.spectral.decompose import decompose

ROWS = ("ours + K-Means", "NCut + K-Means", "final-feature K-Means")


def sweep(args: argparse.Namespace, model: str, ks: list[int]) -> tuple[PaperRun, dict[str, list[float]]]:
    """Oracle mIoU of every row at every K for one model."""
    run = setup(argparse.Namespace(**{**vars(args), "model": model}))
    samples = segmentation_samples(args)
    masks = [s.mask for s in samples]
    store = record(run, [s.image for s in samples], [s.id for s in samples], capture=("q", "k", "v", "features"))
    ours = decompose(store, graph="qk", **run.decompose_options(args.solver))
    bases = {ROWS[0]: lambda k: segment(ours, k=k, seed=args.seed)}
    if run.family != "sd":
        attention = ncut(store, affinity="attention")
        bases[ROWS[1]] = lambda k: segment(attention, k=k, seed=args.seed)
        bases[ROWS[2]] = lambda k: kmeans_features(store, k=k, seed=args.seed)
    scores = {}
    for row, labels_at in bases.items():
        scores[row] = [float(np.nanmean(oracle_miou_per_image(
            upsample_labels(labels_at(k), [m.shape for m in masks]), masks))) for k in ks]
    return run, scores


def plot(curves: dict[str, dict[str, list[float]]], ks: list[int], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False, sharey=True)
    for ax, (model, scores) in zip(axes[0], curves.items()):
        for (row, values), style in zip(scores.items(), ("o-", "s--", "^:")):
            ax.plot(ks, values, style, label=row)
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("K")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("oracle mIoU")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = paper_parser(__doc__, out="out/paper/figure4", data=SHARED / "voc")
    parser.add_argument("--solver", choices=("exact", "adam"), default="exact", help="solver of our rows")
    parser.add_argument("--k", default="2,3,4,5,6,7,8,9,10", help="values of K, comma-separated")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.k.split(",") if k.strip()]
    curves, runs = {}, []
    for model in [m.strip() for m in args.model.split(",") if m.strip()]:
        run, scores = sweep(args, model, ks)
        curves[run.describe()] = scores
        runs.append(run)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(curves, ks, args.out / "figure4.png")
    rows = [[model, row, *values] for model, scores in curves.items() for row, values in scores.items()]
    report(runs[0], "Figure 4: oracle mIoU against K", ["model", "method", *[f"K={k}" for k in ks]], rows,
           {"curves": curves, "ks": ks, "plot": str(args.out / "figure4.png")})


if __name__ == "__main__":
    main()

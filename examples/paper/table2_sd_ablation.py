"""Table 2: Stable Diffusion ablation, layers (all / encoder / decoder) x maximum noise level, on VOC.

For every maximum noise level ``t_max`` (``--t-max``), a store is recorded with the
paper's sampling (``DiffusionSampling``: ``--draws`` timesteps ``t ~ U[0, t_max]``, a
fresh noise field each); for every layer set its multi-layer QK decomposition
(``--solver``: ``exact`` solves the expected operator over the draws, ``adam`` the
paper's buffered Adam) is segmented (K by silhouette over 2..10) and scored by oracle
mIoU.  Layers: all self-attention sites; the encoder (``down_blocks`` and the
``mid_block``); the decoder (``up_blocks``).

Usage::

    python examples/paper/table2_sd_ablation.py --images 8              # SD 1.4 from local files
    python examples/paper/table2_sd_ablation.py --random-init --images 2 --t-max 100,500 --draws 3
"""

from __future__ import annotations

import numpy as np

from _paper import SHARED, paper_parser, record, report, segmentation_samples, setup
from interpret_spectral.evaluation.metrics import oracle_miou_per_image
from interpret_spectral.segmentation import segment, upsample_labels
from interpret_spectral.spectral.decompose import decompose
from interpret_spectral.store.reader import site_names

LAYER_SETS = {"all": ("down_blocks.*", "mid_block.*", "up_blocks.*"), "encoder": ("down_blocks.*", "mid_block.*"),
              "decoder": ("up_blocks.*",)}


def main(argv: list[str] | None = None) -> None:
    parser = paper_parser(__doc__, out="out/paper/table2", data=SHARED / "voc", model="sd")
    parser.add_argument("--t-max", default="100,250,500,750", help="maximum noise levels, comma-separated")
    parser.add_argument("--solver", choices=("exact", "adam"), default="exact")
    args = parser.parse_args(argv)
    run = setup(args)
    if run.family != "sd":
        parser.error(f"Table 2 ablates Stable Diffusion's layers and noise; --model {args.model} is {run.family}")
    samples = segmentation_samples(args)
    masks = [s.mask for s in samples]
    levels = [int(t) for t in args.t_max.split(",") if t.strip()]
    scores: dict[str, list[float]] = {name: [] for name in LAYER_SETS}
    for t_max in levels:
        store = record(run, [s.image for s in samples], [s.id for s in samples], t_max=t_max)
        names = site_names(store)
        for name, patterns in LAYER_SETS.items():
            layers = [site for site in names if any(
                site.startswith(pattern.rstrip("*")) for pattern in patterns)]
            result = decompose(store, graph="qk", layers=layers, **run.decompose_options(args.solver))
            labels = upsample_labels(segment(result, seed=args.seed), [m.shape for m in masks])
            scores[name].append(float(np.nanmean(oracle_miou_per_image(labels, masks))))
    rows = [[name, *values] for name, values in scores.items()]
    report(run, f"Table 2: oracle mIoU on {len(samples)} VOC image(s), {args.draws} draws, solver {args.solver}",
           ["layers", *[f"t_max={t}" for t in levels]], rows)


if __name__ == "__main__":
    main()

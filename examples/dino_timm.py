"""DINO ViT-S/16 through timm (``vit_small_patch16_224.dino``): 'where' and 'what' eigenvectors.

Records the attention q/k/v of every block of the self-supervised DINO ViT-S/16 on
real photos, decomposes the QK graphs (attention: 'where') and the VV graphs (values:
'what') of all 12 layers x 6 heads per image, segments each image, and writes the
figures into ``--out``.

Weights (never downloaded): the timm checkpoint in the local Hugging Face cache (get
it once with ``hf download timm/vit_small_patch16_224.dino`` on a machine with
internet), or ``--weights`` with a local ``.safetensors`` / ``.pth`` file (e.g. the
original ``dino_deitsmall16_pretrain.pth``).  ``--random-init`` runs a tiny
random-init VisionTransformer of the same class instead (a smoke test of the wiring).

Run::

    python examples/dino_timm.py                       # astronaut + coffee from scikit-image
    python examples/dino_timm.py --images my_photos/   # your images
    python examples/dino_timm.py --random-init --image-size 64
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # read the local cache only; never download

import torch  # noqa: E402

from _common import decompose_and_plot, example_images, example_parser, segments_per_image  # noqa: E402
from interpret_spectral import probe  # noqa: E402
from interpret_spectral.models import WeightsNotFoundError, load_model  # noqa: E402

MODEL = "vit_small_patch16_224.dino"


def load(args: argparse.Namespace) -> torch.nn.Module:
    """The real DINO ViT-S/16, or a tiny random-init VisionTransformer with --random-init."""
    if args.random_init:
        import timm

        # Same architecture class (timm VisionTransformer), tiny: 2 blocks, 3 heads, width 48.
        return timm.create_model("vit_small_patch16_224", pretrained=False, img_size=args.image_size,
                                 embed_dim=48, depth=2, num_heads=3, num_classes=0).eval()
    try:
        return load_model(f"timm:{MODEL}", weights=args.weights)
    except WeightsNotFoundError as error:
        sys.exit(f"{error}; or run with --random-init")


def main() -> None:
    parser = example_parser(__doc__, out="out/examples/dino_timm", image_size=448,
                            size_help="input side in pixels, a multiple of 16",
                            weights_help='local .safetensors/.pth checkpoint of vit_small_patch16_224.dino')
    args = parser.parse_args()

    model = load(args)
    names, images = example_images(args)
    # One store: q, k, v of every block, (sample, head, token, channel) per site.
    store = probe(model, images, image_size=args.image_size, sample_ids=names, progress=False)
    out = Path(args.out)
    for graph, result, labels in decompose_and_plot(store, names, args):
        values = ", ".join(f"{v:.3f}" for v in result["values"].isel(sample=0).values[:4])
        print(f"{graph.upper()}: segments per image {segments_per_image(names, labels)}; "
              f"top eigenvalues of {names[0]}: {values}")
    print(f"figures in {out}")


if __name__ == "__main__":
    main()

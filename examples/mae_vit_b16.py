"""MAE ViT-B/16 (Hugging Face ``ViTMAEModel``): 'where' and 'what' eigenvectors.

Records q/k/v of the 12 layers x 12 heads of the masked-autoencoder ViT-B/16 encoder
on real photos, with masking off (``mask_ratio = 0``; the adapter keeps the tokens in
grid order), decomposes the QK graphs (attention: 'where') and VV graphs (values:
'what') of every image, segments them and writes the figures into ``--out``.

Weights (never downloaded): ``facebook/vit-mae-base`` from the local Hugging Face
cache (get it once with ``hf download facebook/vit-mae-base`` on a machine with
internet) or ``--weights`` with a local copy of that folder.  ``--random-init`` runs a
tiny random-init ``ViTMAEModel`` instead (a smoke test of the wiring).

Run::

    python examples/mae_vit_b16.py
    python examples/mae_vit_b16.py --random-init --image-size 64
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # read the local cache only; never download

from transformers import ViTMAEConfig, ViTMAEModel  # noqa: E402

from _common import decompose_and_plot, example_images, example_parser, segments_per_image  # noqa: E402
from interpret_spectral import probe  # noqa: E402

MODEL = "facebook/vit-mae-base"


def load(args: argparse.Namespace) -> ViTMAEModel:
    """The real MAE ViT-B/16 encoder (masking off), or a tiny random-init one with --random-init."""
    if args.random_init:
        config = ViTMAEConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
                              image_size=args.image_size, patch_size=16, mask_ratio=0.0)
        return ViTMAEModel(config).eval()
    source = args.weights or MODEL
    try:
        # The pretrained config masks 75% of the patches; mask_ratio=0.0 keeps every one.
        return ViTMAEModel.from_pretrained(source, local_files_only=True, mask_ratio=0.0).eval()
    except OSError:
        sys.exit(f"{source} is not in the local Hugging Face cache; on a machine with internet run "
                 f"`hf download {MODEL}` and copy ~/.cache/huggingface/hub here, pass --weights FOLDER, "
                 "or run with --random-init")


def main() -> None:
    parser = example_parser(__doc__, out="out/examples/mae_vit_b16", image_size=224,
                            size_help="input side in pixels, a multiple of 16",
                            weights_help='local folder with the facebook/vit-mae-base files')
    args = parser.parse_args()

    model = load(args)
    names, images = example_images(args)
    store = probe(model, images, image_size=args.image_size, sample_ids=names, progress=False)
    out = Path(args.out)
    for graph, result, labels in decompose_and_plot(store, names, args):
        values = ", ".join(f"{v:.3f}" for v in result["values"].isel(sample=0).values[:4])
        print(f"{graph.upper()}: segments per image {segments_per_image(names, labels)}; "
              f"top eigenvalues of {names[0]}: {values}")
    print(f"figures in {out}")


if __name__ == "__main__":
    main()

"""CLIP ViT-B/16 image tower (Hugging Face ``CLIPVisionModel``): 'where' and 'what' eigenvectors.

Records q/k/v of the 12 layers x 12 heads of OpenAI's CLIP ViT-B/16 vision encoder on
real photos, decomposes the QK graphs (attention: 'where') and VV graphs (values:
'what') of every image, segments them and writes the figures into ``--out``.

Weights (never downloaded): ``openai/clip-vit-base-patch16`` from the local Hugging
Face cache (get it once with ``hf download openai/clip-vit-base-patch16`` on a machine
with internet) or ``--weights`` with a local copy of that folder.  ``--random-init``
runs a tiny random-init ``CLIPVisionModel`` instead (a smoke test of the wiring).

Run::

    python examples/clip_vit_b16.py
    python examples/clip_vit_b16.py --random-init --image-size 64
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # read the local cache only; never download

from transformers import CLIPVisionConfig, CLIPVisionModel  # noqa: E402

from _common import decompose_and_plot, example_images, example_parser, segments_per_image  # noqa: E402
from interpret_spectral import probe  # noqa: E402

MODEL = "openai/clip-vit-base-patch16"


def load(args: argparse.Namespace) -> CLIPVisionModel:
    """The real CLIP ViT-B/16 image tower, or a tiny random-init one with --random-init."""
    if args.random_init:
        config = CLIPVisionConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                  intermediate_size=96, image_size=args.image_size, patch_size=16)
        return CLIPVisionModel(config).eval()
    source = args.weights or MODEL
    try:
        return CLIPVisionModel.from_pretrained(source, local_files_only=True).eval()
    except OSError:
        sys.exit(f"{source} is not in the local Hugging Face cache; on a machine with internet run "
                 f"`hf download {MODEL}` and copy ~/.cache/huggingface/hub here, pass --weights FOLDER, "
                 "or run with --random-init")


def main() -> None:
    parser = example_parser(__doc__, out="out/examples/clip_vit_b16", image_size=224,
                            size_help="input side in pixels, a multiple of 16",
                            weights_help='local folder with the openai/clip-vit-base-patch16 files')
    args = parser.parse_args()

    model = load(args)
    names, images = example_images(args)
    # Position embeddings are interpolated when --image-size differs from 224.
    store = probe(model, images, image_size=args.image_size, sample_ids=names, progress=False)
    out = Path(args.out)
    for graph, result, labels in decompose_and_plot(store, names, args):
        values = ", ".join(f"{v:.3f}" for v in result["values"].isel(sample=0).values[:4])
        print(f"{graph.upper()}: segments per image {segments_per_image(names, labels)}; "
              f"top eigenvalues of {names[0]}: {values}")
    print(f"figures in {out}")


if __name__ == "__main__":
    main()

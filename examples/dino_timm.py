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
from PIL import Image  # noqa: E402

from interpret_spectral import probe, viz  # noqa: E402
from interpret_spectral.cli import WeightsNotFoundError, load_model  # noqa: E402
from interpret_spectral.cluster import segment  # noqa: E402
from interpret_spectral.demo import demo_image  # noqa: E402
from interpret_spectral.spectral import decompose  # noqa: E402

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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", nargs="*", help="image files (default: scikit-image's astronaut and coffee)")
    parser.add_argument("--weights", help="local .safetensors/.pth checkpoint of vit_small_patch16_224.dino")
    parser.add_argument("--random-init", action="store_true", help="tiny random-init model of the same class")
    parser.add_argument("--image-size", type=int, default=448, help="input side in pixels, a multiple of 16")
    parser.add_argument("--n-components", type=int, default=10)
    parser.add_argument("--k", type=int, default=None, help="segments per image (default: by silhouette)")
    parser.add_argument("--out", default="out/examples/dino_timm")
    args = parser.parse_args()

    model = load(args)
    names = [Path(p).stem for p in args.images] if args.images else ["astronaut", "coffee"]
    images = [Image.open(p) for p in args.images] if args.images else [demo_image(n) for n in names]
    # One store: q, k, v of every block, (sample, head, token, channel) per site.
    store = probe(model, images, image_size=args.image_size, sample_ids=names, progress=False)
    out = Path(args.out)
    for graph in ("qk", "vv"):
        result = decompose(store, graph=graph, n_components=args.n_components, progress=False)
        labels = segment(result, k=args.k)
        for i, name in enumerate(names):
            image = viz.store_image(store, i)
            viz.plot_eigenvectors(result, sample=i, image=image, start=1, n_groups=1,
                                  path=out / f"{name}_eigenvectors_{graph}.png")
            viz.plot_segments(labels, image, sample=i, path=out / f"{name}_segments_{graph}.png")
        values = ", ".join(f"{v:.3f}" for v in result["values"].isel(sample=0).values[:4])
        print(f"{graph.upper()}: segments per image {dict(zip(names, labels['k'].values.tolist()))}; "
              f"top eigenvalues of {names[0]}: {values}")
    print(f"figures in {out}")


if __name__ == "__main__":
    main()

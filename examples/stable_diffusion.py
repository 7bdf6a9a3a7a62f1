"""Stable Diffusion 1.4 (diffusers): 'where' and 'what' eigenvectors of the UNet's self-attention, over timesteps.

Encodes real photos with the VAE, adds noise at several timesteps, runs the UNet
conditioned on the empty prompt and records q/k/v of its 16 self-attention layers
(``attn1``, token grids 64 x 64 down to 8 x 8 at 512 px), for every timestep.  The QK
graphs (attention: 'where') and VV graphs (values: 'what') of all sites, heads and
timesteps are decomposed together per image (the paper's layer-distributed setting
for diffusion models), each image is segmented, and the figures go into ``--out``.

Weights (never downloaded): ``CompVis/stable-diffusion-v1-4`` from the local Hugging
Face cache (get it once with ``hf download CompVis/stable-diffusion-v1-4`` on a machine
with internet) or ``--weights`` with a local copy of that folder.  ``--random-init``
builds a tiny random-init ``StableDiffusionPipeline`` (VAE, UNet, CLIP text encoder,
tokenizer, scheduler) from configs instead (a smoke test of the wiring).

Run::

    python examples/stable_diffusion.py --timesteps 100,300,500
    python examples/stable_diffusion.py --random-init --image-size 32
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # read the local cache only; never download

import diffusers  # noqa: E402

from _common import decompose_and_plot, example_images, example_parser, segments_per_image  # noqa: E402
from interpret_spectral import probe  # noqa: E402
from interpret_spectral.paper.models import tiny_sd_pipeline  # noqa: E402

MODEL = "CompVis/stable-diffusion-v1-4"


def load(args: argparse.Namespace) -> diffusers.StableDiffusionPipeline:
    """Stable Diffusion 1.4 from local files, or a tiny random-init pipeline with --random-init."""
    if args.random_init:
        return tiny_sd_pipeline()
    source = args.weights or MODEL
    try:
        return diffusers.StableDiffusionPipeline.from_pretrained(
            source, local_files_only=True, safety_checker=None, requires_safety_checker=False
        )
    except OSError:
        sys.exit(f"{source} is not in the local Hugging Face cache; on a machine with internet run "
                 f"`hf download {MODEL}` and copy ~/.cache/huggingface/hub here, pass --weights FOLDER, "
                 "or run with --random-init")


def main() -> None:
    parser = example_parser(__doc__, out="out/examples/stable_diffusion", image_size=None,
                            size_help="input side in pixels (default: 512 for SD 1.4)",
                            weights_help='local folder with the CompVis/stable-diffusion-v1-4 files', model_kind="pipeline")
    parser.add_argument("--timesteps", default="100,300,500", help="diffusion timesteps, comma-separated")
    args = parser.parse_args()
    timesteps = [int(t) for t in args.timesteps.split(",") if t.strip()]

    pipe = load(args)
    pipe.set_progress_bar_config(disable=True)
    names, images = example_images(args)
    # q, k, v get a timestep dimension: (sample, timestep, head, token, channel).
    options = {} if args.image_size is None else {"image_size": args.image_size}
    store = probe(pipe, images, timesteps=timesteps, sample_ids=names, batch_size=1, progress=False, **options)
    grids = sorted({(int(store[s].attrs["grid_h"]), int(store[s].attrs["grid_w"])) for s in store.children})
    print(f"{len(store.children)} self-attention sites, grids {grids}, timesteps {timesteps}")
    out = Path(args.out)
    # Every (site, head, timestep) is one graph; all of them are decomposed together.
    for graph, result, labels in decompose_and_plot(store, names, args):
        print(f"{graph.upper()}: {result.attrs['n_graphs']} graphs; segments per image "
              f"{segments_per_image(names, labels)}")
    print(f"figures in {out}")


if __name__ == "__main__":
    main()

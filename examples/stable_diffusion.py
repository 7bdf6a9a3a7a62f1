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
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # read the local cache only; never download

import diffusers  # noqa: E402
import transformers  # noqa: E402

from _common import decompose_and_plot, example_images, example_parser, segments_per_image  # noqa: E402
from interpret_spectral import probe  # noqa: E402

MODEL = "CompVis/stable-diffusion-v1-4"


def tiny_pipeline(folder: Path) -> diffusers.StableDiffusionPipeline:
    """A random-init StableDiffusionPipeline of tiny width (VAE downscaling 2, two UNet levels)."""
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 32), layers_per_block=1, cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(16, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=32,
    )
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=7, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    # A CLIP tokenizer needs vocabulary files: a 7-token vocabulary is enough for the empty prompt.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "cat</w>": 3, "a": 4, "c": 5, "t": 6}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=8)
    return diffusers.StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000, steps_offset=1, clip_sample=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def load(args: argparse.Namespace, folder: Path) -> diffusers.StableDiffusionPipeline:
    """Stable Diffusion 1.4 from local files, or a tiny random-init pipeline with --random-init."""
    if args.random_init:
        return tiny_pipeline(folder)
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

    with tempfile.TemporaryDirectory() as folder:
        pipe = load(args, Path(folder))
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

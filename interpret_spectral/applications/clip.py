"""CLIP for zero-shot segmentation: the model, its text embeddings and MaskCLIP pixel features.

- :func:`load_clip`: a Hugging Face ``CLIPModel`` and its tokenizer from local files;
- :func:`text_embeddings`: CLIP's prompt-ensembled class embeddings
  (:data:`IMAGENET_TEMPLATES`);
- :func:`clip_pixel_features`: the final attention layer's values of a store mapped
  into CLIP's joint space, as MaskCLIP (Zhou, Loy & Dai, ECCV 2022).

:mod:`interpret_spectral.applications.zero_shot` names regions with them.

Examples
--------
>>> len(IMAGENET_TEMPLATES), IMAGENET_TEMPLATES[0].format("cat"), CLIP_LOGIT_SCALE
(24, 'a photo of a cat.', 100.0)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import xarray as xr

from interpret_spectral.store.reader import patch_tokens, site_names

__all__ = [
    "IMAGENET_TEMPLATES",
    "CLIP_LOGIT_SCALE",
    "load_clip",
    "text_embeddings",
    "clip_pixel_features",
]

#: ImageNet-style prompt templates (from CLIP's prompt-engineering notebook), ``{}`` = class name.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a large {}.",
    "a photo of a small {}.",
    "itap of a {}.",
    "a good photo of a {}.",
)
#: CLIP's trained logit scale (exp of its ``logit_scale`` parameter, clamped at 100).
CLIP_LOGIT_SCALE = 100.0
_PATHS = ("maskclip", "value")


def load_clip(source: str | os.PathLike[str]) -> tuple[Any, Any]:
    """A Hugging Face ``CLIPModel`` and its tokenizer from a local folder or the local cache.

    Nothing is downloaded (``local_files_only=True``).

    Examples
    --------
    >>> model, tokenizer = load_clip("openai/clip-vit-base-patch16")  # doctest: +SKIP
    """
    from transformers import AutoTokenizer, CLIPModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source = str(source)
    try:
        model = CLIPModel.from_pretrained(source, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except OSError as error:
        raise FileNotFoundError(
            f"no CLIP model at {source!r} locally ({error.__class__.__name__}); on a machine with internet run "
            f"`hf download {source}` and copy ~/.cache/huggingface/hub here, or give a local folder"
        ) from error
    return model.eval(), tokenizer


def _as_tensor_features(output: Any) -> Any:
    """``get_text_features`` returns a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    return output if hasattr(output, "shape") else output.pooler_output


def text_embeddings(
    class_names: Sequence[str],
    model: Any,
    tokenizer: Any,
    templates: Sequence[str] = IMAGENET_TEMPLATES,
    batch_size: int = 256,
) -> np.ndarray:
    """Unit CLIP text embedding of every class, averaged over prompt templates.

    Parameters
    ----------
    class_names : sequence of str
        Class names as they go into the templates.
    model : transformers.CLIPModel
        Its ``get_text_features`` embeds the prompts.
    tokenizer
        The model's tokenizer (``CLIPTokenizer``).
    templates : sequence of str
        Prompt templates with one ``{}``.
    batch_size : int
        Prompts per forward pass.

    Returns
    -------
    numpy.ndarray
        ``(classes, projection_dim)`` float32, unit rows.

    Examples
    --------
    >>> text_embeddings(["cat", "dog"], model, tokenizer).shape  # doctest: +SKIP
    (2, 512)
    """
    import torch

    names = [str(n) for n in class_names]
    if not names:
        raise ValueError("class_names is empty: give at least one class")
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ValueError(f"every template needs exactly one '{{}}' for the class name; bad: {bad or 'no templates'}")
    prompts = [t.format(name) for name in names for t in templates]
    device = next(model.parameters()).device
    chunks = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            tokens = tokenizer(prompts[start:start + batch_size], padding=True, truncation=True,
                               return_tensors="pt").to(device)
            chunks.append(_as_tensor_features(model.get_text_features(**tokens)).float().cpu())
    embedded = torch.cat(chunks).reshape(len(names), len(templates), -1)
    embedded = torch.nn.functional.normalize(embedded, dim=-1).mean(dim=1)
    return torch.nn.functional.normalize(embedded, dim=-1).numpy().astype(np.float32)


def _vision_parts(model: Any) -> tuple[Any, Any]:
    """The vision transformer and the visual projection of a CLIPModel / CLIPVisionModelWithProjection."""
    vision = getattr(model, "vision_model", None)
    projection = getattr(model, "visual_projection", None)
    if vision is None or projection is None or not hasattr(vision, "post_layernorm"):
        raise TypeError(
            f"clip_pixel_features needs a transformers CLIPModel (or CLIPVisionModelWithProjection), "
            f"got {type(model).__name__}"
        )
    return vision, projection


def clip_pixel_features(
    store: xr.DataTree,
    model: Any,
    site: int | str = -1,
    path: Literal["maskclip", "value"] = "maskclip",
) -> xr.DataArray:
    """MaskCLIP pixel features of every sample: the final layer's values mapped into CLIP's joint space.

    Parameters
    ----------
    store : xarray.DataTree
        A store of the CLIP model's vision tower (``probe(clip_model, images)``); for
        ``path="maskclip"`` probed with ``capture=("q", "k", "v", "features")``.
    model : transformers.CLIPModel
        The model the store was recorded from (its weights map values to the joint space).
    site : int or str
        The attention site (``-1``: the last one, as MaskCLIP).
    path : {"maskclip", "value"}
        See the module docstring: with the residual and MLP of the block (MaskCLIP) or
        the output projection alone.

    Returns
    -------
    xarray.DataArray
        ``(sample, y, x, feature)`` float32 on the site's token grid.

    Examples
    --------
    >>> features = clip_pixel_features(store, clip_model)  # doctest: +SKIP
    >>> features.dims  # doctest: +SKIP
    ('sample', 'y', 'x', 'feature')
    """
    import torch

    if path not in _PATHS:
        raise ValueError(f"path must be one of {_PATHS}, got {path!r}")
    vision, projection = _vision_parts(model)
    names = site_names(store)
    if isinstance(site, str):
        if site not in names:
            raise KeyError(f"the store has no site {site!r}; its sites are {names}")
        position = names.index(site)
    else:
        position = range(len(names))[site]
    name = names[position]
    attention = vision.get_submodule(str(store[name].attrs["module"]))
    layer = vision.get_submodule(str(store[name].attrs["module"]).rsplit(".", 1)[0])
    values = patch_tokens(store, name, "v")  # (sample, head, tokens, channel)
    n, heads, tokens, channels = values.shape
    v = torch.from_numpy(values.transpose(0, 2, 1, 3).reshape(n, tokens, heads * channels))
    parameter = next(model.parameters())
    v = v.to(device=parameter.device, dtype=parameter.dtype)
    with torch.no_grad():
        x = attention.out_proj(v)
        if path == "maskclip":
            if position == 0:
                raise ValueError("path='maskclip' needs the layer's input, the block output of the previous site; "
                                 "the chosen site is the first one: use path='value'")
            previous = names[position - 1]
            if "features" not in store[previous].data_vars:
                raise KeyError(
                    f"path='maskclip' adds the layer's input, the 'features' of site {previous!r}, which the store "
                    "lacks: probe with capture=('q', 'k', 'v', 'features'), or use path='value'"
                )
            block_input = torch.from_numpy(patch_tokens(store, previous, "features")).to(x)
            x = x + block_input
            x = x + layer.mlp(layer.layer_norm2(x))
        x = projection(vision.post_layernorm(x))
    height, width = int(store[name].attrs["grid_h"]), int(store[name].attrs["grid_w"])
    return xr.DataArray(
        x.float().cpu().numpy().reshape(n, height, width, -1),
        dims=("sample", "y", "x", "feature"),
        coords={"sample": [str(s) for s in store["sample"].values]},
        attrs={"site": name, "path": path, "method": "MaskCLIP value features (Zhou, Loy & Dai, ECCV 2022)"},
    )

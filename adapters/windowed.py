"""Windowed attention (Swin and its relatives): a clear refusal instead of a silent guess.

Swin transformers (timm ``SwinTransformer`` / ``SwinTransformerV2`` /
``SwinTransformerV2Cr``, Hugging Face ``SwinModel`` / ``Swinv2Model`` / ``DonutSwinModel``
and their classification wrappers, torchvision ``swin_t`` / ``swin_v2_t`` ...) attend
within local windows of a few tokens, shifted between layers, over a grid that shrinks
by patch merging from stage to stage.  No layer holds one image-wide token graph: the
affinities between tokens of different windows do not exist.  The decomposition of
Zhang, Yunis & Maire needs that graph, and stitching one graph per window into an
image-wide one would invent every cross-window affinity (zero), so interpret_spectral
does not record these models.

The ``windowed-attention`` adapter matches them (before any generic adapter could
guess) and refuses, naming why and what to do instead: a model with global attention
(a plain ViT: ``timm-vit``, ``timm-eva``, ``hf-vision``, ``torchvision-vit``), or
``PathAdapter`` for a model whose chosen modules attend over the whole image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from interpret_spectral.capture.contract import Adapter, AttentionSite, Tap
from interpret_spectral.capture.registry import AdapterNotFoundError, register_adapter

__all__ = ["WindowedAttentionAdapter", "WindowedAttentionError", "windowed_attention"]

#: Windowed-attention module classes, by the library module that defines them.
WINDOWED_CLASSES: dict[str, frozenset[str]] = {
    "timm.models.swin_transformer": frozenset({"WindowAttention"}),
    "timm.models.swin_transformer_v2": frozenset({"WindowAttention"}),
    "timm.models.swin_transformer_v2_cr": frozenset({"WindowMultiHeadAttention"}),
    "transformers.models.swin.modeling_swin": frozenset({"SwinAttention", "SwinSelfAttention"}),
    "transformers.models.swinv2.modeling_swinv2": frozenset({"Swinv2Attention", "Swinv2SelfAttention"}),
    "transformers.models.donut.modeling_donut_swin": frozenset({"DonutSwinAttention", "DonutSwinSelfAttention"}),
    "transformers.models.maskformer.modeling_maskformer_swin": frozenset(
        {"MaskFormerSwinAttention", "MaskFormerSwinSelfAttention"}
    ),
    "torchvision.models.swin_transformer": frozenset({"ShiftedWindowAttention", "ShiftedWindowAttentionV2"}),
}


class WindowedAttentionError(AdapterNotFoundError, ValueError):
    """The model's attention is windowed (Swin): there is no image-wide graph to record."""


def windowed_attention(model: Any) -> tuple[str, torch.nn.Module] | None:
    """The first windowed-attention module of ``model`` (path, module), or None.

    Examples
    --------
    >>> windowed_attention(torch.nn.MultiheadAttention(4, 2)) is None
    True
    """
    if not isinstance(model, torch.nn.Module):
        return None
    for path, module in model.named_modules():
        kind = type(module)
        if kind.__name__ in WINDOWED_CLASSES.get(kind.__module__, ()):
            return path, module
    return None


def _refusal(model: Any) -> WindowedAttentionError:
    found = windowed_attention(model)
    where = "" if found is None else f" ({type(found[1]).__name__} at {found[0] or 'the model'!r}"
    window = None
    if found is not None:
        window = getattr(found[1], "window_size", None) or getattr(getattr(model, "config", None), "window_size", None)
    if where:
        where += f", windows of {tuple(window) if isinstance(window, Sequence) else window} tokens)" if window else ")"
    return WindowedAttentionError(
        f"{type(model).__name__} uses windowed attention{where}: every layer attends only within local windows, "
        "shifted between layers, over a grid that shrinks stage by stage, so no layer has one image-wide token "
        "graph for the spectral decomposition, and interpret_spectral does not invent the missing cross-window "
        "affinities. Probe a model with global attention instead (a plain ViT: timm VisionTransformer or Eva, a "
        "Hugging Face Dinov2/ViT/CLIP/SigLIP, a torchvision vit_b_16), or record modules that attend over the "
        "whole image with PathAdapter(q=..., k=..., v=..., heads=..., grid=...) (see docs/extending.md)"
    )


@register_adapter("windowed-attention")
class WindowedAttentionAdapter(Adapter):
    """Matches models with windowed attention (Swin) and refuses them with the reason and what to do.

    Constructing it (which ``adapter="auto"`` does for a Swin model) raises
    :class:`WindowedAttentionError`; so does every method.

    Examples
    --------
    >>> WindowedAttentionAdapter.matches(torch.nn.Linear(2, 2))
    False
    """

    #: Tried before every generic adapter, so that no generic one guesses a layout.
    priority: ClassVar[int] = 20

    def __init__(self, model: Any, **options: Any) -> None:
        raise _refusal(model)

    @classmethod
    def matches(cls, model: Any) -> bool:
        """Whether ``model`` holds a windowed-attention module (:data:`WINDOWED_CLASSES`)."""
        return windowed_attention(model) is not None

    def sites(self, batch: Any) -> list[AttentionSite]:
        """Refused: windowed attention has no image-wide sites."""
        raise _refusal(self.model)

    def taps(self, site: AttentionSite, capture: Sequence[str]) -> list[Tap]:
        """Refused: windowed attention has no image-wide sites."""
        raise _refusal(self.model)

    def assemble(
        self, site: AttentionSite, tapped: Mapping[str, list[torch.Tensor]], capture: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Refused: windowed attention has no image-wide sites."""
        raise _refusal(self.model)

    def output_tap(self, site: AttentionSite) -> Tap:
        """Refused: windowed attention has no image-wide sites."""
        raise _refusal(self.model)

"""Adapter for timm EVA and EVA-02 (``timm.models.eva.Eva``): q and k after the rotary embedding.

EVA-02 (``eva02_*``) rotates q and k with rotary position embeddings (RoPE) inside the
attention module, with a function call, not a module, so no hook can read the rotated
values.  What is read, per block ``blocks.<i>`` (timm 1.0.x ``EvaAttention.forward``, and
``AttentionRope.forward`` for ``attn_type="rope"``)::

    x                                          # tap: attn input          -> v (recomputed)
    q, k, v = qkv projection of x              # fused or separate, with EVA's q/v-only bias
    q, k = self.q_norm(q), self.k_norm(k)      # taps: q_norm / k_norm outputs
    q, k = rope(q), rope(k) past the prefix    # rope= argument, kept by a hook -> rotation redone
    x = scaled_dot_product_attention(q, k, v)
    x = self.norm(x ...)                       # tap: norm input -> attention output

The ``rope`` tensor the block hands to its attention module is kept by a forward
pre-hook that :meth:`TimmEvaAdapter.forward_context` adds for the batch (and removes on
every exit path); :meth:`TimmEvaAdapter.assemble` applies it to the tapped q and k with
timm's own ``apply_rot_embed_cat``, leaving the prefix tokens (class, registers)
unrotated, as the module does.  So the recorded q and k are what the softmax saw, which
the rebuild check proves.  ``v`` is recomputed from the attention input with the
module's value weights (EVA's fused ``qkv`` is applied with ``F.linear`` and its
q/v-only bias, so the ``qkv`` module itself never runs).  Grouped-query attention
(fewer key/value heads) is expanded to one key/value per query head, as the module does.

Input sizes: a model created with ``dynamic_img_size=True`` runs (and its rotary
embedding is rebuilt) at any size; a fixed-size model caches its rotary embedding for
its own grid and runs only at its own size (other sizes are refused before the forward
pass).  Preprocessing, token kinds and site names are those of the ``timm-vit``
adapter (:class:`~interpret_spectral.adapters.timm_vit.TimmViTAdapter`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from interpret_spectral.adapters.timm_vit import TimmViTAdapter
from interpret_spectral.capture.contract import AttentionSite, Tap
from interpret_spectral.capture.preprocess import warn_size_differs
from interpret_spectral.capture.registry import register_adapter

__all__ = ["TimmEvaAdapter"]


@register_adapter("timm-eva")
class TimmEvaAdapter(TimmViTAdapter):
    """Adapter for timm ``Eva`` models (EVA, EVA-02, and others built on ``timm.models.eva``).

    Parameters
    ----------
    model : timm.models.eva.Eva
        The model, in eval mode.
    image_size, resize, mean, std
        As for :class:`~interpret_spectral.adapters.timm_vit.TimmViTAdapter`; sizes other
        than the model's own need a model created with ``dynamic_img_size=True``.

    Examples
    --------
    >>> from timm.models.eva import Eva
    >>> model = Eva(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
    ...             use_rot_pos_emb=True, ref_feat_shape=(4, 4)).eval()
    >>> site = TimmEvaAdapter(model).sites(torch.zeros(1, 3, 32, 32))[0]
    >>> site.name, site.grid, site.token_kinds[:2]
    ('blocks.0.attn', (4, 4), ('cls', 'patch'))
    """

    #: Tried before generic adapters by ``adapter="auto"``.
    priority: ClassVar[int] = 10
    _accepts: ClassVar[str] = "a timm Eva whose blocks use EvaAttention or AttentionRope"
    #: The ``rope`` argument of each attention module, kept by :meth:`forward_context` for one batch.
    _rope: Mapping[str, list[torch.Tensor | None]] = MappingProxyType({})

    # -- identification ---------------------------------------------------------------
    @classmethod
    def _timm_classes(cls) -> tuple[type, tuple[type, ...]]:
        """``Eva``, whose blocks use ``EvaAttention`` or ``AttentionRope``.

        Examples
        --------
        >>> TimmEvaAdapter._timm_classes()[0].__name__
        'Eva'
        >>> TimmEvaAdapter.matches(torch.nn.Linear(2, 2))
        False
        """
        from timm.layers import AttentionRope
        from timm.models.eva import Eva, EvaAttention

        return Eva, (EvaAttention, AttentionRope)

    def describe(self) -> dict[str, Any]:
        """Root attributes of ``timm-vit``, plus whether q and k are rotated (``rotary``).

        Examples
        --------
        >>> from timm.models.eva import Eva
        >>> model = Eva(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, use_rot_pos_emb=True)
        >>> TimmEvaAdapter(model).describe()["rotary"]
        'applied to the recorded q and k'
        """
        rotary = "applied to the recorded q and k" if getattr(self.model, "rope", None) is not None else "none"
        return {**super().describe(), "rotary": rotary}

    # -- inputs -----------------------------------------------------------------------
    @contextlib.contextmanager
    def forward_context(self, batch: Any) -> Iterator[None]:
        """Keep the ``rope`` argument of every attention module for the batch (hooks removed on every exit)."""
        size = self._batch_size(batch)
        native = self._native_size()
        if size != native:
            if not self._dynamic_now():
                raise ValueError(
                    f"this timm {type(self.model).__name__} was built for {native[0]}x{native[1]} px inputs and caches "
                    f"its rotary embedding for that grid; got {size[0]}x{size[1]}. Feed {native[0]}x{native[1]} "
                    "inputs (the adapter's default image_size), or create the model with dynamic_img_size=True"
                )
            warn_size_differs(f"timm {type(self.model).__name__}", native, size, self._warned)
        kept: dict[str, list[torch.Tensor | None]] = {}
        self._rope = kept
        handles = []
        try:
            for order, block in enumerate(self.model.blocks):
                kept[f"blocks.{order}.attn"] = []
                hook = functools.partial(_keep_rope, kept=kept[f"blocks.{order}.attn"])
                handles.append(block.attn.register_forward_pre_hook(hook, with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()

    # -- sites and reading ------------------------------------------------------------
    def _sources(self, site: AttentionSite) -> dict[str, Tap]:
        """Those of ``timm-vit``, but ``v`` is recomputed from the attention input.

        Examples
        --------
        >>> from timm.models.eva import Eva
        >>> adapter = TimmEvaAdapter(Eva(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2))
        >>> [t.key for t in adapter.taps(adapter.sites(torch.zeros(1, 3, 32, 32))[0], ["q", "v"])]
        ['blocks.0.attn:input', 'blocks.0.attn.q_norm:output']
        """
        return {**super()._sources(site), "v": Tap(site.module, "input")}

    def _finish(self, site: AttentionSite, read: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``q``/``k`` rotated with the kept ``rope``; ``v`` from the attention input; key/value groups expanded."""
        attn = self.model.get_submodule(site.module)
        groups = int(getattr(attn, "num_kv_groups", 1))
        if "v" in read:
            read["v"] = _value(attn, read["v"]).repeat_interleave(groups, dim=1)
        rope = self._kept_rope(site) if {"q", "k"} & set(read) else None
        for name in ("q", "k"):
            if name not in read:
                continue
            value = read[name] if rope is None else _rotate(attn, read[name], rope)
            read[name] = value.repeat_interleave(groups, dim=1) if name == "k" else value
        return read

    def _kept_rope(self, site: AttentionSite) -> torch.Tensor | None:
        kept = self._rope.get(site.module, [])
        if len(kept) != 1:
            raise RuntimeError(
                f"site {site.name!r}: the rotary embedding of its attention module was kept {len(kept)} times; "
                "the timm-eva adapter keeps it inside forward_context(), which must wrap exactly one forward pass"
            )
        return kept[0]


def _keep_rope(
    _module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], *, kept: list[torch.Tensor | None]
) -> None:
    """Forward pre-hook: keep the ``rope`` argument the attention module is called with."""
    rope = kwargs.get("rope", args[1] if len(args) > 1 else None)
    kept.append(None if rope is None else rope.detach())


def _value(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``v`` ``(B, H_kv, N, D)`` of an ``EvaAttention`` / ``AttentionRope`` from its input ``x``."""
    batch, tokens, _ = x.shape
    with torch.no_grad():
        if attn.qkv is not None:
            width = attn.qkv.weight.shape[0] // 3
            weight = attn.qkv.weight[2 * width :]
            if getattr(attn, "q_bias", None) is not None:
                bias = attn.v_bias  # EVA: bias only on q and v, added with F.linear (or separately: the same sum)
            else:
                bias = None if attn.qkv.bias is None else attn.qkv.bias[2 * width :]
            value = F.linear(x, weight, bias)
        else:
            value = F.linear(x, attn.v_proj.weight, attn.v_proj.bias)
    return value.reshape(batch, tokens, -1, attn.head_dim).transpose(1, 2)


def _rotate(attn: torch.nn.Module, value: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Apply the rotary embedding past the prefix tokens, as ``EvaAttention.forward`` does."""
    from timm.layers.pos_embed_sincos import apply_rot_embed_cat

    prefix = int(attn.num_prefix_tokens)
    half = bool(getattr(attn, "rotate_half", False))
    with torch.no_grad():
        rotated = apply_rot_embed_cat(value[:, :, prefix:, :], rope, half=half)
        return torch.cat([value[:, :, :prefix, :], rotated], dim=2).type_as(value)

"""Adapter for transformer-lens models: ``TransformerBridge`` (4.x) and any ``HookedRootModule``.

(The module is named ``lens`` so that it can never shadow the ``transformer_lens`` package.)

transformer-lens names its hook points ``blocks.{i}.attn.hook_q|hook_k|hook_v`` in every
version; a hook point is an ``nn.Module`` (``HookPoint``) whose output is the hooked value,
so the engine reads it with an ordinary output tap.  In 4.x a ``TransformerBridge``
exposes them as aliases of ``blocks.{i}.attn.q.hook_out`` etc., with values
``(B, N, heads * D)``; 3.x ``HookedTransformer`` gives ``(B, N, heads, D)``.  Both are
read.  Models with rotary embeddings are read at ``hook_rot_q|hook_rot_k`` (after the
rotation, what the softmax saw); a rotary model whose bridge does not fire those hooks
is refused, since its recorded q, k would not be the ones used.  Grouped-query
attention (fewer key/value heads) is expanded to one key/value head per query head, as
the models do (``repeat_interleave``).

Tokens
    Text models: the sequence is a ``1 x n`` grid.  Vision models wrapped by
    transformer-lens (``cfg.is_visual_model``, e.g. a Hugging Face ViT in a
    ``TransformerBridge``) keep their 2-D patch grid, computed from the input size and
    the patch size, with the class token (and DeiT's distillation token) in front.
    ``grid=`` and ``special_tokens=`` override both.

Scale
    ``scale=`` if given; else the attention module's own: ``scaling`` of a wrapped
    Hugging Face module, ``1 / scale`` of the 4.x native attention, ``1 / attn_scale``
    of a 3.x ``HookedTransformer`` attention; else from the config (``use_attn_scale``,
    ``attn_scale``, ``d_head ** -0.5``).

Causal models: the store's root attribute ``attention`` is ``"causal"``; a rebuild of
their attention output masks the scores above the diagonal.

The rebuild check's output tap is ``blocks.{i}.attn.hook_z``, the input of the output
projection (``(B, N, heads * D)`` in 4.x, ``(B, N, heads, D)`` in 3.x).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from interpret_spectral.adapters._tokens import (
    check_capture, check_token_counts, single_value, special_token_kinds, token_layout,
)
from interpret_spectral.capture.contract import Adapter, AttentionSite, Tap, check_scale
from interpret_spectral.capture.registry import register_adapter

__all__ = ["TransformerLensAdapter"]


def _hook_names(model: Any) -> set[str]:
    hooks = getattr(model, "hook_dict", None)
    return set(hooks) if isinstance(hooks, Mapping) else set()


def _is_lens_model(model: Any) -> bool:
    if "transformer_lens" not in sys.modules or not isinstance(model, torch.nn.Module):
        return False
    from transformer_lens import HookedRootModule

    bridge = any(
        cls.__name__ == "TransformerBridge" and cls.__module__.startswith("transformer_lens")
        for cls in type(model).__mro__
    )
    return isinstance(model, HookedRootModule) or bridge


@register_adapter("transformer-lens")
class TransformerLensAdapter(Adapter):
    """Adapter for transformer-lens models with hook points ``blocks.{i}.attn.hook_q|k|v``.

    Parameters
    ----------
    model : transformer_lens.TransformerBridge or transformer_lens.HookedRootModule
        The model, in eval mode.
    grid : (int, int), optional
        Token grid; default ``1 x n`` for text, the patch grid for vision models.
    special_tokens : int or sequence of str, optional
        Leading non-grid tokens (a count: ``"cls"`` then ``"register"``; or kinds).
        Default: none for text, the class (and distillation) token for vision models.
    scale : float, optional
        Softmax scale; default: the model's own (see the module notes).

    Examples
    --------
    >>> from transformer_lens import TransformerBridge, TransformerBridgeConfig
    >>> cfg = TransformerBridgeConfig(d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32,
    ...                               n_ctx=8, d_vocab=20, act_fn="gelu")
    >>> adapter = TransformerLensAdapter(TransformerBridge.boot_native(cfg).eval())
    >>> site = adapter.sites(torch.zeros(1, 5, dtype=torch.long))[1]
    >>> site.name, site.grid, site.num_heads, site.head_dim, round(site.scale, 4)
    ('blocks.1.attn', (1, 5), 2, 8, 0.3536)
    """

    def __init__(
        self,
        model: Any,
        grid: Sequence[int] | None = None,
        special_tokens: int | Sequence[str] | None = None,
        scale: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        if not self.matches(model):
            raise TypeError(
                "the transformer-lens adapter needs a TransformerBridge or HookedRootModule with hook points "
                f"blocks.{{i}}.attn.hook_q|hook_k|hook_v, got {type(model).__name__}; "
                "pick another adapter, or name the hooks with PathAdapter(q=..., k=..., v=...)"
            )
        if special_tokens is not None:
            special_token_kinds(special_tokens)  # fail early on a bad value
        if scale is not None:
            check_scale(scale, "scale")
        self.grid = None if grid is None else tuple(grid)
        self.special_tokens = special_tokens
        self.scale = scale
        hooks = _hook_names(model)
        self.layers = sorted(
            int(name.split(".")[1])
            for name in hooks
            if name.startswith("blocks.") and name.endswith(".attn.hook_q")
            and all(f"blocks.{name.split('.')[1]}.attn.hook_{part}" in hooks for part in ("k", "v", "z"))
        )
        self._read: dict[str, dict[str, str]] = {}

    # -- identification ---------------------------------------------------------------
    @classmethod
    def matches(cls, model: Any) -> bool:
        """Whether ``model`` is a transformer-lens model with ``blocks.0.attn.hook_q|k|v|z``.

        Examples
        --------
        >>> TransformerLensAdapter.matches(torch.nn.Linear(2, 2))
        False
        """
        if not _is_lens_model(model):
            return False
        hooks = _hook_names(model)
        return all(f"blocks.0.attn.hook_{part}" in hooks for part in ("q", "k", "v", "z"))

    def _cfg(self, name: str, default: Any = None) -> Any:
        return getattr(getattr(self.model, "cfg", None), name, default)

    def _visual(self) -> bool:
        return bool(self._cfg("is_visual_model", False))

    def describe(self) -> dict[str, Any]:
        """Root attributes: model class, adapter, library, model name and attention direction."""
        direction = "bidirectional" if self._visual() else str(self._cfg("attention_dir", "causal"))
        info: dict[str, Any] = {**super().describe(), "library": "transformer-lens", "attention": direction}
        if self._cfg("model_name"):
            info["model_name"] = str(self._cfg("model_name"))
        return info

    # -- sites and reading ------------------------------------------------------------
    def _scale(self, layer: int, head_dim: int) -> float:
        if self.scale is not None:
            return float(self.scale)
        attn = self.model.get_submodule(f"blocks.{layer}.attn")
        inner = getattr(attn, "original_component", None) or attn
        for module in (inner, attn):
            scaling = getattr(module, "scaling", None)
            if isinstance(scaling, (int, float)) and not isinstance(scaling, bool):
                return float(scaling)  # Hugging Face: a multiplier
        if type(inner).__name__ == "NativeAttention":
            return 1.0 / float(inner.scale)  # transformer-lens 4.x native: a divisor
        attn_scale = getattr(attn, "attn_scale", None)  # 3.x HookedTransformer Attention: a divisor
        if isinstance(attn_scale, (int, float)) and attn_scale > 0:
            return 1.0 / float(attn_scale)
        if self._cfg("use_attn_scale", True) is False:
            return 1.0
        cfg_scale = self._cfg("attn_scale", -1.0)
        if isinstance(cfg_scale, (int, float)) and cfg_scale > 0:
            return 1.0 / float(cfg_scale)
        return head_dim ** -0.5

    def _layout(self, batch: Any, num_tokens: int) -> tuple[tuple[int, int], tuple[str, ...]]:
        if self.grid is not None or self.special_tokens is not None:
            return token_layout(num_tokens, self.grid, self.special_tokens)
        if not self._visual():
            return token_layout(num_tokens, (1, num_tokens), 0)
        patch = getattr(getattr(getattr(self.model, "original_model", None), "config", None), "patch_size", None)
        if patch is None or not isinstance(batch, torch.Tensor) or batch.ndim != 4:
            raise ValueError(
                "cannot place the tokens of this vision model on a grid; pass grid=(h, w) and special_tokens="
            )
        ph, pw = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
        grid = (int(batch.shape[-2]) // ph, int(batch.shape[-1]) // pw)
        n_special = num_tokens - grid[0] * grid[1]
        distilled = any(name.endswith("distillation_token") for name, _ in self.model.named_parameters())
        special = ["cls", "distillation"][:n_special] if distilled else ["cls"][:n_special]
        special += ["register"] * (n_special - len(special))
        return token_layout(num_tokens, grid, special)

    def sites(self, batch: Any) -> list[AttentionSite]:
        """One site per block (``blocks.<i>.attn``), from one dry forward pass on ``batch``.

        Examples
        --------
        >>> from transformer_lens import TransformerBridge, TransformerBridgeConfig
        >>> cfg = TransformerBridgeConfig(d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=32,
        ...                               n_ctx=8, d_vocab=20, act_fn="gelu")
        >>> TransformerLensAdapter(TransformerBridge.boot_native(cfg)).sites(torch.zeros(1, 3, dtype=torch.long))[0].token_kinds
        ('patch', 'patch', 'patch')
        """
        hooks = _hook_names(self.model)
        names = [
            f"blocks.{i}.attn.hook_{part}"
            for i in self.layers
            for part in ("q", "k", "v", "rot_q", "rot_k")
            if f"blocks.{i}.attn.hook_{part}" in hooks
        ]
        shapes: dict[str, tuple[int, ...]] = {}
        order: list[int] = []
        handles = []

        def record(_module: Any, _args: Any, output: Any, name: str) -> None:
            shapes.setdefault(name, tuple(output.shape))
            layer = int(name.split(".")[1])
            if layer not in order:
                order.append(layer)

        try:
            for name in names:
                module = self.model.get_submodule(name)
                handles.append(module.register_forward_hook(lambda m, a, o, name=name: record(m, a, o, name)))
            self.run(batch)
        finally:
            for handle in handles:
                handle.remove()
        rotary = self._cfg("positional_embedding_type") == "rotary"
        num_heads = self._cfg("n_heads")
        sites = []
        self._read = {}
        for position, layer in enumerate(order):
            prefix = f"blocks.{layer}.attn"
            read = {part: f"{prefix}.hook_{part}" for part in ("q", "k", "v")}
            for part in ("q", "k"):
                if f"{prefix}.hook_rot_{part}" in shapes:
                    read[part] = f"{prefix}.hook_rot_{part}"
                elif rotary:
                    raise ValueError(
                        f"{type(self.model).__name__} uses rotary embeddings but {prefix}.hook_rot_{part} does not "
                        "fire, so the rotated q/k the softmax saw cannot be read; this model cannot be probed "
                        "through transformer-lens hooks"
                    )
            q_shape = shapes[read["q"]]
            if len(q_shape) == 4:  # 3.x: (B, N, heads, D)
                heads, head_dim, num_tokens = q_shape[2], q_shape[3], q_shape[1]
            else:
                if num_heads is None:
                    raise ValueError("the model's cfg has no n_heads; the adapter cannot split q into heads")
                heads, head_dim, num_tokens = int(num_heads), q_shape[2] // int(num_heads), q_shape[1]
            grid, kinds = self._layout(batch, num_tokens)
            self._read[prefix] = read
            sites.append(
                AttentionSite(prefix, prefix, position, int(heads), int(head_dim), self._scale(layer, head_dim), grid, kinds)
            )
        if not sites:
            raise RuntimeError(f"no attention hook point of {type(self.model).__name__} fired on the batch")
        return sites

    def _features_hook(self, site: AttentionSite) -> str:
        block = site.module.rsplit(".", 1)[0]
        hooks = _hook_names(self.model)
        return f"{block}.hook_resid_post" if f"{block}.hook_resid_post" in hooks else f"{block}.hook_out"

    def taps(self, site: AttentionSite, capture: Sequence[str]) -> list[Tap]:
        """The hook points of ``q``, ``k``, ``v`` (rotary: ``hook_rot_q|k``) and the block output."""
        check_capture(capture, self.name)
        if site.module not in self._read:
            raise KeyError(f"site {site.name!r} is not one of this adapter's sites; call sites(batch) first")
        taps = [Tap(self._read[site.module][part]) for part in ("q", "k", "v") if part in capture]
        if "features" in capture:
            taps.append(Tap(self._features_hook(site)))
        return taps

    def assemble(
        self, site: AttentionSite, tapped: Mapping[str, list[torch.Tensor]], capture: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """``(B, heads, N, D)`` q, k, v from the hook values; grouped key/value heads are repeated."""
        out: dict[str, torch.Tensor] = {}
        for part in ("q", "k", "v"):
            if part not in capture:
                continue
            value = single_value(tapped, Tap(self._read[site.module][part]), "transformer-lens")
            if value.ndim == 3:  # (B, N, H*D) -> (B, N, H, D)
                value = value.reshape(*value.shape[:2], -1, site.head_dim)
            value = value.transpose(1, 2)  # (B, H, N, D)
            if value.shape[1] != site.num_heads:
                if site.num_heads % value.shape[1]:
                    raise RuntimeError(
                        f"site {site.name!r}: {part} has {value.shape[1]} heads for {site.num_heads} query heads"
                    )
                value = value.repeat_interleave(site.num_heads // value.shape[1], dim=1)
            out[part] = value
        if "features" in capture:
            out["features"] = single_value(tapped, Tap(self._features_hook(site)), "transformer-lens")
        check_token_counts(site, out, "were the inputs of another length than the batch the sites were made from?")
        return out

    def output_tap(self, site: AttentionSite) -> Tap:
        """``blocks.<i>.attn.hook_z``: the input of the output projection."""
        return Tap(f"{site.module}.hook_z")

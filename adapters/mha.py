"""Adapter for models built from PyTorch ``nn.MultiheadAttention``.

Found by ``adapter="auto"`` for any ``torch.nn.Module`` that holds an
``nn.MultiheadAttention`` (after every more specific adapter: ``priority = -10``),
including a bare ``nn.MultiheadAttention`` (called as ``mha(x, x, x)``).

Sites
    Every ``nn.MultiheadAttention`` that runs once in a forward pass, in the order the
    modules *run* (found by one dry forward pass with pre-hooks on the first batch),
    named by module path.  Self-attention (``key`` and ``value`` are the query, or
    equal to it) is the common case; cross-attention whose keys have as many tokens
    as the queries is recorded too (separate ``q/k/v_proj_weight`` when ``kdim`` /
    ``vdim`` differ); cross-attention with another number of key tokens cannot be
    stored on one token axis and is left out.

Reading
    The module's query input is tapped (port ``"input"``) and ``q``, ``k``, ``v`` are
    computed from it with the module's own in-projection (``in_proj_weight`` split in
    three, or ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``) and split into heads;
    ``batch_first=False`` inputs ``(N, B, E)`` are transposed.  The scale is
    ``head_dim ** -0.5``, the one torch uses.

    ``nn.MultiheadAttention`` applies its output projection as a weight inside one fused
    function and never calls ``out_proj`` as a module, so the attention output before
    the projection is not observable, and a tap reads only a module's first argument
    (the query), not the keys and values of cross-attention.  While its
    :meth:`~MultiheadAttentionAdapter.forward_context` is active (both backends enter
    it), the adapter therefore puts a forward hook on every recorded module that
    (1) keeps the keys and values of cross-attention, (2) recomputes the attention output
    before the projection with torch's own ``F.multi_head_attention_forward`` (identity
    output projection, the call's masks) and (3) passes it through ``out_proj`` called as
    a module, whose input is the :meth:`~MultiheadAttentionAdapter.output_tap`.  The
    result is checked against the module's real output (a mismatch, e.g. dropout in
    train mode, raises), and the model's own computation is left untouched.  The hooks
    are removed on every exit path.

Tokens
    ``special_tokens`` leading non-grid tokens (e.g. ``1`` for a class token), then the
    grid row-major; without ``grid=`` the grid tokens must be a square number.  The
    layout is never guessed: 197 tokens (a 14 x 14 grid and a class token, torchvision's
    ``vit_b_16``) without ``special_tokens=1`` are refused with a message naming the
    option; give ``grid=(1, n)`` for a sequence.  Attention masks are not recorded: q, k, v are what the softmax
    saw before masking.  Run the model in eval mode (dropout changes the output).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from interpret_spectral.adapters._tokens import (
    check_capture, check_token_counts, single_value, special_token_kinds, token_layout,
)
from interpret_spectral.capture.contract import Adapter, AttentionSite, Tap, split_heads
from interpret_spectral.capture.registry import register_adapter

__all__ = ["MultiheadAttentionAdapter"]

_ROOT_NAME = "attention"


def _call_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    names = ("query", "key", "value")
    values = list(args[:3]) + [kwargs[name] for name in names[len(args[:3]) :] if name in kwargs]
    if len(values) != 3:
        raise TypeError("nn.MultiheadAttention was called without query, key and value")
    return values[0], values[1], values[2]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.shape == b.shape and bool(torch.equal(a, b)))


@register_adapter("torch-mha")
class MultiheadAttentionAdapter(Adapter):
    """Adapter for models whose attention layers are ``torch.nn.MultiheadAttention``.

    Parameters
    ----------
    model : torch.nn.Module
        A module holding ``nn.MultiheadAttention`` layers (or one itself), in eval mode.
    grid : (int, int), optional
        Token grid (``(1, n)`` for a sequence); default: a square grid, refused when the
        number of grid tokens is not a square.
    special_tokens : int or sequence of str, optional
        Leading non-grid tokens: a count (the first ``"cls"``, then ``"register"``) or kinds.
        Default: none, when the sequence length leaves no doubt (a square number).

    Examples
    --------
    >>> from torch import nn
    >>> class Tiny(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
    ...     def forward(self, x):
    ...         return self.attn(x, x, x, need_weights=False)[0]
    >>> adapter = MultiheadAttentionAdapter(Tiny().eval())
    >>> [(s.name, s.grid, s.head_dim) for s in adapter.sites(torch.zeros(1, 16, 8))]
    [('attn', (4, 4), 4)]
    """

    #: Generic: tried after every more specific adapter by ``adapter="auto"``.
    priority: ClassVar[int] = -10

    def __init__(
        self,
        model: Any,
        grid: Sequence[int] | None = None,
        special_tokens: int | Sequence[str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        if not self.matches(model):
            raise TypeError(
                "the torch-mha adapter needs a torch.nn.Module holding nn.MultiheadAttention layers, "
                f"got {type(model).__name__}; pick another adapter (adapter='auto' lists them)"
            )
        self.grid = None if grid is None else tuple(grid)
        self.special_tokens = special_tokens
        if special_tokens is not None:
            special_token_kinds(special_tokens)  # fail early on a bad value
        self._cross: set[str] = set()
        self._site_modules: dict[str, torch.nn.MultiheadAttention] = {}
        self._kept: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    # -- identification ---------------------------------------------------------------
    @classmethod
    def matches(cls, model: Any) -> bool:
        """Whether ``model`` is or holds an ``nn.MultiheadAttention``.

        Examples
        --------
        >>> MultiheadAttentionAdapter.matches(torch.nn.MultiheadAttention(4, 2))
        True
        >>> MultiheadAttentionAdapter.matches(torch.nn.Linear(2, 2))
        False
        """
        return isinstance(model, torch.nn.Module) and any(
            isinstance(module, torch.nn.MultiheadAttention) for module in model.modules()
        )

    def describe(self) -> dict[str, Any]:
        """Root attributes: model class, adapter and library."""
        return {**super().describe(), "library": "torch"}

    # -- inputs -----------------------------------------------------------------------
    def call_args(self, batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(batch,)``; ``(batch, batch, batch)`` without weights for a bare ``nn.MultiheadAttention``."""
        if isinstance(self.model, torch.nn.MultiheadAttention):
            return (batch, batch, batch), {"need_weights": False}
        return (batch,), {}

    @contextlib.contextmanager
    def forward_context(self, batch: Any) -> Iterator[None]:
        """Hooks that call ``out_proj`` as a module with the attention output (see the module notes)."""
        self._kept = {path: [] for path in self._cross}
        handles = []
        try:
            for path, module in self._site_modules.items():
                hook = functools.partial(_project_as_module, path=path, kept=self._kept.get(path))
                handles.append(module.register_forward_hook(hook, with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()

    # -- sites and reading ------------------------------------------------------------
    def sites(self, batch: Any) -> list[AttentionSite]:
        """The ``nn.MultiheadAttention`` modules in the order they run on ``batch`` (one dry forward pass).

        Examples
        --------
        >>> mha = torch.nn.MultiheadAttention(8, 2)  # batch_first=False: (tokens, batch, channels)
        >>> MultiheadAttentionAdapter(mha, grid=(1, 6)).sites(torch.zeros(6, 1, 8))[0].grid
        (1, 6)
        """
        paths = {
            module: path for path, module in self.model.named_modules() if isinstance(module, torch.nn.MultiheadAttention)
        }
        calls: dict[str, list[tuple[int, int, bool]]] = {path: [] for path in paths.values()}
        order: list[str] = []

        def pre_hook(module: torch.nn.MultiheadAttention, args: tuple, kwargs: dict) -> None:
            path = paths[module]
            query, key, value = _call_inputs(args, kwargs)
            if query.dim() != 3:
                raise ValueError(
                    f"nn.MultiheadAttention {path or '(the model)'!r} got an unbatched {query.dim()}-D query; "
                    "the torch-mha adapter records batched inputs only"
                )
            token_axis = 1 if module.batch_first else 0
            is_self = _same(query, key) and _same(query, value)
            calls[path].append((query.shape[token_axis], key.shape[token_axis], is_self))
            if path not in order:
                order.append(path)

        handles = [module.register_forward_pre_hook(pre_hook, with_kwargs=True) for module in paths]
        try:
            args, kwargs = self.call_args(batch)
            with torch.no_grad():
                self.model(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        sites: list[AttentionSite] = []
        self._cross = set()
        self._site_modules = {}
        for path in order:
            module = self.model.get_submodule(path)
            if len(calls[path]) != 1:
                raise RuntimeError(
                    f"nn.MultiheadAttention {path!r} ran {len(calls[path])} times in one forward pass; "
                    "the torch-mha adapter records modules that run once (use PathAdapter for shared layers)"
                )
            n_query, n_key, is_self = calls[path][0]
            if n_key != n_query:
                continue  # cross-attention over another sequence: not one token axis
            if module.bias_k is not None or module.add_zero_attn:
                raise ValueError(
                    f"nn.MultiheadAttention {path!r} adds key/value tokens (add_bias_kv or add_zero_attn) "
                    "that are not in the sequence; the torch-mha adapter cannot record them"
                )
            if not is_self:
                self._cross.add(path)
            grid, kinds = token_layout(n_query, self.grid, self.special_tokens)
            self._site_modules[path] = module
            sites.append(
                AttentionSite(
                    name=path or _ROOT_NAME,
                    module=path,
                    order=len(sites),
                    num_heads=int(module.num_heads),
                    head_dim=int(module.head_dim),
                    scale=float(module.head_dim ** -0.5),
                    grid=grid,
                    token_kinds=kinds,
                )
            )
        if not sites:
            raise ValueError(
                f"no nn.MultiheadAttention in {type(self.model).__name__} ran as self-attention on the batch"
            )
        return sites

    def taps(self, site: AttentionSite, capture: Sequence[str]) -> list[Tap]:
        """The module's query input (q, k, v are computed from it), and its output for ``features``.

        Examples
        --------
        >>> adapter = MultiheadAttentionAdapter(torch.nn.MultiheadAttention(8, 2, batch_first=True))
        >>> [t.key for t in adapter.taps(adapter.sites(torch.zeros(1, 4, 8))[0], ["q", "k"])]
        [':input']
        """
        check_capture(capture, self.name)
        taps = []
        if {"q", "k", "v"} & set(capture):
            taps.append(Tap(site.module, "input"))
        if "features" in capture:
            taps.append(Tap(site.module, "output"))
        return taps

    def _batch_first(self, value: torch.Tensor, module: torch.nn.MultiheadAttention) -> torch.Tensor:
        return value if module.batch_first else value.transpose(0, 1)

    def assemble(
        self, site: AttentionSite, tapped: Mapping[str, list[torch.Tensor]], capture: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """q, k, v from the module's inputs through its in-projection; features: its output ``(B, N, E)``."""
        module = self.model.get_submodule(site.module)
        out: dict[str, torch.Tensor] = {}
        if {"q", "k", "v"} & set(capture):
            query = self._batch_first(single_value(tapped, Tap(site.module, "input"), "torch-mha"), module)
            if site.module in self._cross:
                kept = self._kept.get(site.module) or []
                if len(kept) != 1:
                    raise RuntimeError(
                        f"site {site.name!r} is cross-attention: its keys and values are kept inside the adapter's "
                        "forward_context(), which the forward pass did not run in"
                    )
                key, value = (self._batch_first(x, module) for x in kept[0])
            else:
                key = value = query
            embed = module.embed_dim
            if module._qkv_same_embed_dim:
                weights = module.in_proj_weight.split(embed)
            else:
                weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
            biases = module.in_proj_bias.split(embed) if module.in_proj_bias is not None else (None,) * 3
            inputs = {"q": query, "k": key, "v": value}
            with torch.no_grad():
                for index, name in enumerate(("q", "k", "v")):
                    if name in capture:
                        projected = F.linear(inputs[name], weights[index], biases[index])
                        out[name] = split_heads(projected, site.num_heads)
        if "features" in capture:
            out["features"] = self._batch_first(single_value(tapped, Tap(site.module, "output"), "torch-mha"), module)
        check_token_counts(site, out)
        return out

    def output_tap(self, site: AttentionSite) -> Tap:
        """The input of ``out_proj`` ``(B, N, E)``, observable inside :meth:`forward_context`."""
        return Tap(f"{site.module}.out_proj" if site.module else "out_proj", "input")


def _project_as_module(
    module: torch.nn.MultiheadAttention,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    output: Any,
    *,
    path: str,
    kept: list[tuple[torch.Tensor, torch.Tensor]] | None,
) -> None:
    """Forward hook: recompute the attention output before ``out_proj`` and call ``out_proj`` on it."""
    call = _MHA_SIGNATURE.bind(module, *args, **kwargs)
    call.apply_defaults()
    query, key, value = call.arguments["query"], call.arguments["key"], call.arguments["value"]
    if kept is not None:
        kept.append((key.detach(), value.detach()))
    elif not (_same(query, key) and _same(query, value)):
        raise RuntimeError(
            f"nn.MultiheadAttention {path!r} ran as self-attention when the sites were made and now gets "
            "other keys or values; make the sites from a batch that runs the model the same way"
        )
    if module.batch_first:
        query, key, value = (x.transpose(0, 1) for x in (query, key, value))
    identity = torch.eye(module.embed_dim, dtype=query.dtype, device=query.device)
    with torch.no_grad():
        attention, _ = F.multi_head_attention_forward(
            query, key, value, module.embed_dim, module.num_heads,
            module.in_proj_weight, module.in_proj_bias, module.bias_k, module.bias_v,
            module.add_zero_attn, module.dropout, identity, None,
            training=module.training, key_padding_mask=call.arguments["key_padding_mask"],
            need_weights=False, attn_mask=call.arguments["attn_mask"],
            use_separate_proj_weight=not module._qkv_same_embed_dim,
            q_proj_weight=module.q_proj_weight, k_proj_weight=module.k_proj_weight,
            v_proj_weight=module.v_proj_weight, is_causal=call.arguments["is_causal"],
        )
        # (N, B, E) -> (B, N, E): the layout of the output tap.
        projected = module.out_proj(attention.transpose(0, 1))
    actual = output[0] if isinstance(output, (tuple, list)) else output
    actual = actual if module.batch_first else actual.transpose(0, 1)
    error = float((projected - actual).norm() / actual.norm().clamp_min(1e-30))
    if error > 1e-4:
        raise RuntimeError(
            f"nn.MultiheadAttention {path!r}: recomputing its attention gives another output "
            f"(relative error {error:.2e}); is the model in train mode (dropout)? call model.eval()"
        )


_MHA_SIGNATURE = inspect.signature(torch.nn.MultiheadAttention.forward)

"""The path adapter: record q, k, v of any model from module paths.

For models no adapter knows, name the modules whose *outputs* are the queries, keys
and values (or one fused ``qkv`` projection), and the output projection whose *input*
is the attention output::

    from interpret_spectral import probe
    from interpret_spectral.adapters.path import PathAdapter

    spec = PathAdapter(q="blocks.{i}.attn.q", k="blocks.{i}.attn.k", v="blocks.{i}.attn.v",
                       out_proj="blocks.{i}.attn.proj", heads=4, special_tokens=1)
    store = probe(model, images_tensor, adapter=spec)

or, without constructing the spec, ``probe(model, x, adapter="path", q=..., heads=4)``.

Paths
    A path with ``{i}`` expands to ``0, 1, 2, ...`` for as long as the module exists; a
    list gives one path per layer; a plain string is one layer.  Every path given must
    name the same number of layers.  ``q``/``k``/``v`` override the matching part of
    ``qkv``, so ``qkv="blocks.{i}.attn.qkv", q="blocks.{i}.attn.q_norm",
    k="blocks.{i}.attn.k_norm"`` reads a timm ViT with q/k norms exactly.

Shapes
    Modules run batch first.  A ``q``/``k``/``v`` output is ``(B, N, heads * D)`` or
    ``(B, heads, N, D)``; a ``qkv`` output is ``(B, N, 3 * heads * D)`` laid out as
    ``(3, heads, D)`` (q, then k, then v; the timm / ViT convention).  ``features``
    names a module whose output ``(B, N, C)`` is stored as the site's features.

Sites
    One site per layer, ordered as the layers fire in a forward pass (found by one
    dry forward pass with hooks on the first batch).  A site's name is the longest
    common parent path of its q, k, v, qkv and out_proj modules (``blocks.3.attn``), or
    ``layer<i>`` when that is not unique.  Tokens: ``special_tokens``
    leading non-grid tokens, then the grid row-major; without ``grid=`` the grid tokens
    must be a square number.  A layout that cannot be told from the sequence length
    (e.g. 197 tokens without ``special_tokens=1``) is refused with a message naming
    ``grid=`` / ``special_tokens=``; give ``grid=(1, n)`` for a sequence.

The token-layout helpers shared with the other generic adapters live in
:mod:`interpret_spectral.adapters._tokens`.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from interpret_spectral.adapters._tokens import (
    check_capture, check_token_counts, heads_first, single_value, special_token_kinds, token_layout,
)
from interpret_spectral.capture.contract import Adapter, AttentionSite, Tap, check_scale
from interpret_spectral.capture.registry import register_adapter

__all__ = ["PathAdapter"]

_PLACEHOLDER = "{i}"
_PATH_ROLES = ("q", "k", "v", "qkv", "out_proj", "features")


def _expand(pattern: str | Sequence[str], model: torch.nn.Module, role: str) -> list[str]:
    if isinstance(pattern, str):
        if _PLACEHOLDER not in pattern:
            return [pattern]
        paths = []
        for i in itertools.count():
            path = pattern.replace(_PLACEHOLDER, str(i))
            try:
                model.get_submodule(path)
            except AttributeError:
                break
            paths.append(path)
        if not paths:
            raise ValueError(
                f"{role}={pattern!r}: no module {pattern.replace(_PLACEHOLDER, '0')!r} in "
                f"{type(model).__name__}; list its modules with [n for n, _ in model.named_modules()]"
            )
        return paths
    if isinstance(pattern, Sequence) and pattern and all(isinstance(p, str) for p in pattern):
        return list(pattern)
    raise TypeError(f"{role} must be a module path (with an optional {{i}}) or a list of paths, got {pattern!r}")


def _common_parent(paths: Sequence[str]) -> str:
    parents = [path.split(".")[:-1] for path in paths]
    common: list[str] = []
    for parts in zip(*parents):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


# -- the adapter ----------------------------------------------------------------------
@register_adapter("path")
class PathAdapter(Adapter):
    """Adapter for any model, from the module paths of its q, k, v (or fused qkv) projections.

    ``PathAdapter(...)`` without a model is a *spec*: ``probe(model, x,
    adapter=PathAdapter(...))`` binds it to the model (:meth:`bind`).  Given a model
    (``PathAdapter(model, ...)``, or ``probe(model, x, adapter="path", ...)``), it is
    bound at once.

    Parameters
    ----------
    model : torch.nn.Module, optional
        The model (an nnsight wrapper is unwrapped by ``probe``).
    q, k, v : str or list of str, optional
        Modules whose outputs are the queries, keys and values (after any q/k norm).
    qkv : str or list of str, optional
        A fused projection ``(B, N, 3 * heads * D)``; ``q``/``k``/``v`` override its parts.
    heads : int
        Number of attention heads.
    grid : (int, int), optional
        Token grid; ``(1, n)`` for a sequence.  Default: a square grid, refused when the
        grid tokens are not a square number.
    scale : float, optional
        Softmax scale of ``q k^T``; default ``head_dim ** -0.5``.
    out_proj : str or list of str, optional
        The output projection: its *input* is the attention output ``(B, N, heads * D)``
        (needed only by the rebuild check, :meth:`output_tap`).  Not ``out=``: that is
        ``probe()``'s store path, and ``probe(model, x, adapter="path", ...)`` passes the
        adapter's options along with it.
    special_tokens : int or sequence of str, optional
        Leading non-grid tokens (see :func:`~interpret_spectral.adapters._tokens.token_layout`);
        none when not given and the length is unambiguous.
    features : str or list of str, optional
        Modules whose output ``(B, N, C)`` is captured as ``features``.
    call : callable, optional
        ``call(batch) -> (args, kwargs)`` of the model call, when the model does not take
        the batch as its one argument (e.g. a diffusers pipeline wrapped by nnsight).

    Examples
    --------
    >>> from torch import nn
    >>> class Attn(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.qkv, self.proj = nn.Linear(8, 24), nn.Linear(8, 8)
    ...     def forward(self, x):
    ...         q, k, v = self.qkv(x).reshape(*x.shape[:2], 3, 2, 4).permute(2, 0, 3, 1, 4)
    ...         a = torch.softmax(q @ k.transpose(-1, -2) * 0.5, -1) @ v
    ...         return self.proj(a.transpose(1, 2).flatten(2))
    >>> model = nn.Sequential(Attn(), Attn())
    >>> adapter = PathAdapter(qkv="{i}.qkv", out_proj="{i}.proj", heads=2).bind(model)
    >>> [(s.name, s.grid) for s in adapter.sites(torch.zeros(1, 9, 8))]
    [('0', (3, 3)), ('1', (3, 3))]
    """

    def __init__(
        self,
        model: Any = None,
        *,
        heads: int,
        q: str | Sequence[str] | None = None,
        k: str | Sequence[str] | None = None,
        v: str | Sequence[str] | None = None,
        qkv: str | Sequence[str] | None = None,
        grid: Sequence[int] | None = None,
        scale: float | None = None,
        out_proj: str | Sequence[str] | None = None,
        special_tokens: int | Sequence[str] | None = None,
        features: str | Sequence[str] | None = None,
        call: Callable[[Any], tuple[tuple[Any, ...], dict[str, Any]]] | None = None,
    ) -> None:
        super().__init__(model)
        if isinstance(heads, bool) or not isinstance(heads, (int, np.integer)) or heads < 1:
            raise ValueError(f"heads must be a positive int, got {heads!r}")
        missing = [name for name, path in (("q", q), ("k", k), ("v", v)) if path is None]
        if missing and qkv is None:
            raise ValueError(
                f"PathAdapter needs the modules of q, k and v: {', '.join(missing)} missing; "
                "give q=, k=, v= paths, or qkv= for a fused projection"
            )
        if scale is not None:
            check_scale(scale, "scale")
        if call is not None and not callable(call):
            raise TypeError(f"call must be a callable batch -> (args, kwargs), got {type(call).__name__}")
        if special_tokens is not None:
            special_token_kinds(special_tokens)  # fail early on a bad value
        self.spec: dict[str, Any] = dict(
            heads=int(heads), q=q, k=k, v=v, qkv=qkv, grid=None if grid is None else tuple(grid),
            scale=scale, out_proj=out_proj, special_tokens=special_tokens, features=features, call=call,
        )
        self._layers: list[dict[str, str]] = []
        self._site_layers: dict[str, dict[str, str]] = {}
        if model is not None:
            if not isinstance(model, torch.nn.Module):
                raise TypeError(f"PathAdapter reads torch modules; got {type(model).__name__}")
            self._layers = self._expand_layers(model)

    # -- binding ----------------------------------------------------------------------
    def bind(self, model: Any) -> PathAdapter:
        """A copy of this spec bound to ``model``; its paths are expanded against the model.

        Examples
        --------
        >>> model = torch.nn.ModuleDict({"q": torch.nn.Linear(2, 2), "k": torch.nn.Linear(2, 2)})
        >>> spec = PathAdapter(q="q", k="k", v="k", heads=1)
        >>> spec.model is None, spec.bind(model).model is model
        (True, True)
        """
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"PathAdapter reads torch modules; got {type(model).__name__}")
        bound = copy.copy(self)
        bound.model = model
        bound._layers = self._expand_layers(model)
        bound._site_layers = {}
        return bound

    def _expand_layers(self, model: torch.nn.Module) -> list[dict[str, str]]:
        expanded = {
            role: _expand(self.spec[role], model, role) for role in _PATH_ROLES if self.spec[role] is not None
        }
        counts = {role: len(paths) for role, paths in expanded.items()}
        if len(set(counts.values())) != 1:
            raise ValueError(f"the paths name different numbers of layers: {counts}; give one path per layer for each")
        for role, paths in expanded.items():
            for path in paths:
                try:
                    model.get_submodule(path)
                except AttributeError as error:
                    raise ValueError(f"{role}: {type(model).__name__} has no module {path!r}") from error
        n_layers = next(iter(counts.values()))
        return [{role: paths[i] for role, paths in expanded.items()} for i in range(n_layers)]

    def _require_model(self) -> torch.nn.Module:
        if self.model is None:
            raise RuntimeError(
                "this PathAdapter is a spec without a model; pass it to probe(model, x, adapter=spec) "
                "or bind it with spec.bind(model)"
            )
        return self.model

    # -- identification ---------------------------------------------------------------
    @classmethod
    def matches(cls, model: Any) -> bool:
        """Never picked by ``adapter="auto"``: the paths must be given.

        Examples
        --------
        >>> PathAdapter.matches(torch.nn.Linear(2, 2))
        False
        """
        return False

    def describe(self) -> dict[str, Any]:
        """Root attributes: model class, adapter and the path spec."""
        paths = {role: self.spec[role] for role in _PATH_ROLES if self.spec[role] is not None}
        return {**super().describe(), "paths": paths, "heads": self.spec["heads"]}

    # -- inputs -----------------------------------------------------------------------
    def call_args(self, batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(batch,)``, or what ``call(batch)`` returns."""
        if self.spec["call"] is None:
            return (batch,), {}
        args, kwargs = self.spec["call"](batch)
        return tuple(args), dict(kwargs)

    # -- sites and reading ------------------------------------------------------------
    def _source(self, layer: dict[str, str], part: str) -> Tap:
        return Tap(layer[part] if part in layer else layer["qkv"])

    def sites(self, batch: Any) -> list[AttentionSite]:
        """One site per layer, in the order the layers fire, from one dry forward pass on ``batch``.

        Examples
        --------
        >>> layer = torch.nn.ModuleDict({"q": torch.nn.Linear(4, 4), "k": torch.nn.Linear(4, 4)})
        >>> model = torch.nn.Sequential(layer.q, layer.k)
        >>> PathAdapter(model, q="0", k="1", v="1", heads=2, grid=(1, 3)).sites(torch.zeros(1, 3, 4))[0].grid
        (1, 3)
        """
        model = self._require_model()
        fired: list[str] = []
        shapes: dict[str, tuple[int, ...]] = {}
        handles = []

        def hook(_module: Any, _args: Any, output: Any, path: str) -> None:
            value = output[0] if isinstance(output, (tuple, list)) else output
            fired.append(path)
            shapes.setdefault(path, tuple(value.shape))

        try:
            for path in {p for layer in self._layers for p in layer.values()}:
                handles.append(
                    model.get_submodule(path).register_forward_hook(
                        lambda m, a, o, path=path: hook(m, a, o, path)
                    )
                )
            self.run(batch)
        finally:
            for handle in handles:
                handle.remove()
        heads = self.spec["heads"]
        sites = []
        for index, layer in enumerate(self._layers):
            for role, path in layer.items():
                if role != "out_proj" and path not in shapes:
                    raise RuntimeError(f"{role} module {path!r} did not run in a forward pass on the batch")
            q_path = self._source(layer, "q").module
            shape = shapes[q_path]
            from_qkv = "q" not in layer
            if len(shape) == 4:
                if shape[1] != heads:
                    raise ValueError(f"q module {q_path!r} gives {shape}; a 4-D q must be (batch, {heads}, tokens, head_dim)")
                num_tokens, head_dim = shape[2], shape[3]
            elif len(shape) == 3:
                width = shape[2] // 3 if from_qkv else shape[2]
                if (from_qkv and shape[2] % 3) or width % heads:
                    raise ValueError(
                        f"{'qkv' if from_qkv else 'q'} module {q_path!r} gives width {shape[2]}, "
                        f"not divisible into {'3 x ' if from_qkv else ''}{heads} heads"
                    )
                num_tokens, head_dim = shape[1], width // heads
            else:
                raise ValueError(f"q module {q_path!r} gives shape {shape}; expected (batch, tokens, channels)")
            grid, kinds = token_layout(num_tokens, self.spec["grid"], self.spec["special_tokens"])
            scale = self.spec["scale"] if self.spec["scale"] is not None else head_dim ** -0.5
            module = _common_parent([p for role, p in layer.items() if role != "features"])
            first = min(fired.index(p) for role, p in layer.items() if role != "out_proj")
            sites.append((first, index, module, head_dim, scale, grid, kinds))
        sites.sort()
        names = [module or f"layer{index}" for _, index, module, *_ in sites]
        if len(set(names)) != len(names):
            names = [f"layer{index}" for _, index, *_ in sites]
        self._site_layers = {}
        result = []
        for order, ((_, index, module, head_dim, scale, grid, kinds), name) in enumerate(zip(sites, names)):
            self._site_layers[name] = self._layers[index]
            result.append(AttentionSite(name, module, order, heads, int(head_dim), float(scale), grid, kinds))
        return result

    def _layer(self, site: AttentionSite) -> dict[str, str]:
        if site.name not in self._site_layers:
            raise KeyError(f"site {site.name!r} is not one of this adapter's sites; call sites(batch) first")
        return self._site_layers[site.name]

    def taps(self, site: AttentionSite, capture: Sequence[str]) -> list[Tap]:
        """The q, k, v (or qkv) module outputs, and the features module, for ``capture``."""
        check_capture(capture, self.name)
        layer = self._layer(site)
        taps: list[Tap] = []
        for part in ("q", "k", "v"):
            tap = self._source(layer, part)
            if part in capture and tap not in taps:
                taps.append(tap)
        if "features" in capture:
            if "features" not in layer:
                raise ValueError("capture includes 'features'; give PathAdapter(features=...) a module path")
            taps.append(Tap(layer["features"]))
        return taps

    def assemble(
        self, site: AttentionSite, tapped: Mapping[str, list[torch.Tensor]], capture: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Split the tapped outputs into ``(B, heads, N, head_dim)`` q, k, v."""
        layer = self._layer(site)
        out: dict[str, torch.Tensor] = {}
        for index, part in enumerate(("q", "k", "v")):
            if part not in capture:
                continue
            value = single_value(tapped, self._source(layer, part), "path")
            if part in layer:
                out[part] = heads_first(value, site.num_heads, f"{part} of {site.name!r}")
            else:
                batch, tokens, width = value.shape
                out[part] = value.reshape(batch, tokens, 3, site.num_heads, width // (3 * site.num_heads))[
                    :, :, index
                ].transpose(1, 2)
        if "features" in capture:
            out["features"] = single_value(tapped, Tap(layer["features"]), "path")
        check_token_counts(site, out)
        return out

    def output_tap(self, site: AttentionSite) -> Tap:
        """The input of the ``out_proj`` module (``(B, N, heads * D)``)."""
        layer = self._layer(site)
        if "out_proj" not in layer:
            raise ValueError("the rebuild check needs the output projection: give PathAdapter(out_proj=...)")
        return Tap(layer["out_proj"], "input")

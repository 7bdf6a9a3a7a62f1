"""Attention sites, the adapter contract and the adapter registry.

An *adapter* is the only code that knows a backbone.  It answers three questions
for one family of models (see ``DESIGN.md``):

1. which modules are attention layers, in forward order, and their
   :class:`AttentionSite` (stable name, module path, heads, head dim, scale,
   token grid, special tokens);
2. how raw inputs become one forward pass (:meth:`Adapter.preprocess`,
   :meth:`Adapter.run`);
3. how to read the per-head ``q``, ``k``, ``v`` the layer actually used from
   *taps* on its modules (:meth:`Adapter.taps`, :meth:`Adapter.assemble`).

Adapters are declarative about *where* to read: they name module outputs or
inputs (:class:`Tap`), and the capture engine in :mod:`interpret_spectral.probe`
reads them through forward hooks or nnsight.  This is what makes
``backend="hooks"`` and ``backend="nnsight"`` give identical stores.

Registering an adapter::

    from interpret_spectral.sites import Adapter, register_adapter

    @register_adapter("my-model")
    class MyAdapter(Adapter):
        @classmethod
        def matches(cls, model):
            return type(model).__name__ == "MyModel"
        ...

Third-party packages register theirs through the entry-point group
``interpret_spectral.adapters`` (the entry point's value is the adapter class).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch

__all__ = [
    "AttentionSite",
    "Tap",
    "Adapter",
    "register_adapter",
    "available_adapters",
    "get_adapter_class",
    "resolve_adapter",
    "AdapterNotFoundError",
    "split_heads",
]

TOKEN_KINDS = ("patch", "cls", "register", "distillation", "text", "other")
CAPTURABLE = ("q", "k", "v", "features")


@dataclasses.dataclass(frozen=True)
class AttentionSite:
    """One attention layer as the store sees it.

    Parameters
    ----------
    name : str
        Stable name used as the store group, e.g. ``"blocks.3.attn"``.
    module : str
        Dotted path of the attention module inside the model.
    order : int
        Position in forward order (0 is the first attention layer).
    num_heads, head_dim : int
        Heads and channels per head of ``q``/``k``/``v``.
    scale : float
        Softmax scale the layer applies to ``q k^T`` (usually ``head_dim ** -0.5``).
    grid : tuple of int
        ``(grid_h, grid_w)`` of the patch tokens, row-major.
    token_kinds : tuple of str
        Kind of every token in sequence order: ``"patch"`` for grid tokens, and
        ``"cls"``, ``"register"``, ``"distillation"``, ``"text"`` or ``"other"``.
        Patch tokens appear in row-major grid order.

    Examples
    --------
    >>> site = AttentionSite("blocks.0.attn", "blocks.0.attn", 0, 6, 64, 0.125,
    ...                      (2, 2), ("cls", "patch", "patch", "patch", "patch"))
    >>> site.num_tokens, site.token_yx()[0].tolist()
    (5, [-1, 0, 0, 1, 1])
    """

    name: str
    module: str
    order: int
    num_heads: int
    head_dim: int
    scale: float
    grid: tuple[int, int]
    token_kinds: tuple[str, ...]

    def __post_init__(self) -> None:
        n_patch = sum(1 for kind in self.token_kinds if kind == "patch")
        if n_patch != self.grid[0] * self.grid[1]:
            raise ValueError(
                f"site {self.name!r}: {n_patch} patch tokens do not fill the grid "
                f"{self.grid[0]}x{self.grid[1]}; the adapter must give one 'patch' kind per grid cell"
            )
        unknown = set(self.token_kinds) - set(TOKEN_KINDS)
        if unknown:
            raise ValueError(f"site {self.name!r}: unknown token kinds {sorted(unknown)}; use {TOKEN_KINDS}")

    @property
    def num_tokens(self) -> int:
        """Number of tokens in the sequence (patch and special)."""
        return len(self.token_kinds)

    def token_yx(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of every token on the grid, ``-1`` for special tokens.

        Returns
        -------
        token_y, token_x : numpy.ndarray of int32
        """
        kinds = np.asarray(self.token_kinds)
        token_y = np.full(len(kinds), -1, dtype=np.int32)
        token_x = np.full(len(kinds), -1, dtype=np.int32)
        patch = np.flatnonzero(kinds == "patch")
        token_y[patch] = np.arange(len(patch)) // self.grid[1]
        token_x[patch] = np.arange(len(patch)) % self.grid[1]
        return token_y, token_x

    def attrs(self) -> dict[str, Any]:
        """The site's store-group attributes (see DESIGN.md, "The store")."""
        return {
            "module": self.module,
            "order": int(self.order),
            "grid_h": int(self.grid[0]),
            "grid_w": int(self.grid[1]),
            "num_heads": int(self.num_heads),
            "head_dim": int(self.head_dim),
            "scale": float(self.scale),
        }


@dataclasses.dataclass(frozen=True)
class Tap:
    """A module output (or input) that the capture engine must read.

    Parameters
    ----------
    module : str
        Dotted path of the module in the model (``""`` is the model itself).
    port : {"output", "input"}
        ``"output"``: the module's return value (the first element when it returns a
        tuple); ``"input"``: its first positional argument.
    """

    module: str
    port: Literal["output", "input"] = "output"

    @property
    def key(self) -> str:
        """A unique key ``"<module>:<port>"``."""
        return f"{self.module}:{self.port}"


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reshape ``(B, N, H*D)`` into ``(B, H, N, D)``.

    Examples
    --------
    >>> split_heads(torch.zeros(2, 5, 12), 3).shape
    torch.Size([2, 3, 5, 4])
    """
    b, n, c = x.shape
    if c % num_heads:
        raise ValueError(f"width {c} is not divisible by {num_heads} heads")
    return x.reshape(b, n, num_heads, c // num_heads).permute(0, 2, 1, 3)


class Adapter(abc.ABC):
    """Base class of every adapter; one instance is bound to one model.

    Subclasses set ``name`` (through :func:`register_adapter`) and implement
    :meth:`matches`, :meth:`sites`, :meth:`taps` and :meth:`assemble`.  They
    override :meth:`preprocess` when the model accepts images, and :meth:`run`
    when one batch needs more than ``model(batch)`` (diffusion: several timesteps).

    A tap may fire several times during :meth:`run` (one call per timestep); the
    engine hands :meth:`assemble` the list of values in call order.
    """

    name: ClassVar[str] = ""
    #: Whether :meth:`run` calls the model exactly once (required for nnsight).
    single_forward: ClassVar[bool] = True

    def __init__(self, model: Any, **options: Any) -> None:
        if options:
            raise TypeError(
                f"adapter {self.name!r} takes no options, got {sorted(options)}; "
                "options such as timesteps= only apply to adapters that document them"
            )
        self.model = model

    # -- identification ---------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def matches(cls, model: Any) -> bool:
        """Whether this adapter knows ``model`` (used by ``adapter="auto"``)."""

    def describe(self) -> dict[str, Any]:
        """Root attributes describing the model for the store (JSON-able values)."""
        return {"model": type(self.model).__name__, "adapter": self.name}

    # -- inputs -----------------------------------------------------------------------
    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """Turn PIL images into one model-ready batch.

        The default refuses: adapters of models that take images override it.
        """
        raise TypeError(
            f"adapter {self.name!r} cannot preprocess images; pass a model-ready tensor batch instead"
        )

    def model_module(self) -> torch.nn.Module:
        """The ``torch.nn.Module`` whose sub-modules the taps name."""
        return self.model

    def call_args(self, batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Positional and keyword arguments of the one model call for ``batch``."""
        return (batch,), {}

    def forward_context(self, batch: Any) -> contextlib.AbstractContextManager[Any]:
        """A context entered around the forward pass(es) of ``batch``, by every backend.

        Adapters that must change model state for a batch (e.g. timm's dynamic image
        size for a new input size) do it here and restore it on exit.
        """
        return contextlib.nullcontext()

    def bind(self, model: Any) -> Adapter:
        """This adapter for ``model``, when it was made without one (a spec such as ``PathAdapter(...)``).

        The default refuses: adapters that can be made without a model override it.
        """
        raise TypeError(
            f"adapter {self.name!r} was made without a model and cannot bind one; construct it with the model"
        )

    def run(self, batch: Any) -> None:
        """Run one forward pass (or several) on a model-ready batch."""
        args, kwargs = self.call_args(batch)
        with torch.no_grad():
            self.model_module()(*args, **kwargs)

    def extra_dims(self, batch: Any) -> dict[str, np.ndarray]:
        """Extra leading dimensions of q/k/v after ``sample`` (e.g. ``{"timestep": [...]}``)."""
        return {}

    # -- sites and reading ------------------------------------------------------------
    @abc.abstractmethod
    def sites(self, batch: Any) -> list[AttentionSite]:
        """The attention sites, in forward order, for inputs shaped like ``batch``."""

    @abc.abstractmethod
    def taps(self, site: AttentionSite, capture: Sequence[str]) -> list[Tap]:
        """What to read for ``site``, in execution order, to produce ``capture``."""

    @abc.abstractmethod
    def assemble(
        self, site: AttentionSite, tapped: Mapping[str, list[torch.Tensor]], capture: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Turn tapped values (by :attr:`Tap.key`) into the captured arrays.

        Returns ``q``/``k``/``v`` as ``(B, [T,] H, N, D)`` and ``features`` as
        ``(B, [T,] N, C)``, for the names in ``capture``.
        """

    @abc.abstractmethod
    def output_tap(self, site: AttentionSite) -> Tap:
        """The input of the site's output projection: the attention output the model used.

        Used by the rebuild check ``softmax(q k^T * scale) v == attention output``;
        its value is ``(B, N, H*D)`` (heads concatenated), as the projection sees it.
        """


# -- registry -------------------------------------------------------------------------
_REGISTRY: dict[str, type[Adapter]] = {}
_ENTRY_POINTS_LOADED = False
ENTRY_POINT_GROUP = "interpret_spectral.adapters"


class AdapterNotFoundError(LookupError):
    """No adapter knows the model, or the name given is not registered."""


def register_adapter(name: str) -> Callable[[type[Adapter]], type[Adapter]]:
    """Class decorator that registers an adapter under ``name``.

    Examples
    --------
    >>> from interpret_spectral.sites import register_adapter, Adapter
    >>> @register_adapter("doc-example")
    ... class DocAdapter(Adapter):
    ...     @classmethod
    ...     def matches(cls, model): return False
    ...     def sites(self, batch): return []
    ...     def taps(self, site, capture): return []
    ...     def assemble(self, site, tapped, capture): return {}
    ...     def output_tap(self, site): return Tap(site.module, "output")
    >>> "doc-example" in available_adapters()
    True
    """

    def decorate(cls: type[Adapter]) -> type[Adapter]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"an adapter named {name!r} is already registered ({existing.__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        cls = entry.load()
        if entry.name not in _REGISTRY:
            register_adapter(entry.name)(cls)


def available_adapters() -> list[str]:
    """Names of every registered adapter, built-in and third-party.

    Examples
    --------
    >>> "timm-vit" in available_adapters()
    True
    """
    import interpret_spectral.adapters  # noqa: F401  (registers the built-ins)

    _load_entry_points()
    return sorted(_REGISTRY)


def get_adapter_class(name: str) -> type[Adapter]:
    """The adapter class registered under ``name``."""
    names = available_adapters()
    if name not in _REGISTRY:
        raise AdapterNotFoundError(f"no adapter named {name!r}; the adapters are: {', '.join(names)}")
    return _REGISTRY[name]


_HOW_TO_EXTEND = (
    "write one: subclass interpret_spectral.sites.Adapter, decorate it with "
    "@register_adapter('name'), or pass PathAdapter(q=..., k=..., v=...) for any module "
    "path (see docs/extending.md)"
)


def resolve_adapter(model: Any, adapter: str | Adapter | type[Adapter] = "auto", **options: Any) -> Adapter:
    """Return an adapter instance bound to ``model``.

    Parameters
    ----------
    model : object
        The model to probe.
    adapter : str, Adapter or Adapter subclass
        ``"auto"`` picks the first registered adapter whose ``matches(model)`` holds
        (built-ins are tried most specific first); a name picks that adapter; an
        instance is used as it is.
    **options
        Adapter options such as ``timesteps=`` for diffusion.

    Examples
    --------
    >>> import torch
    >>> resolve_adapter(torch.nn.Linear(2, 2))  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    AdapterNotFoundError: no adapter knows Linear ...
    """
    if isinstance(adapter, Adapter):
        if options:
            raise TypeError("options are given to the adapter's constructor, not with an adapter instance")
        if adapter.model is None:
            return adapter.bind(model)
        return adapter
    if isinstance(adapter, type) and issubclass(adapter, Adapter):
        return adapter(model, **options)
    if adapter != "auto":
        return get_adapter_class(adapter)(model, **options)
    names = available_adapters()
    candidates = sorted(_REGISTRY.values(), key=lambda cls: getattr(cls, "priority", 0), reverse=True)
    for cls in candidates:
        if cls.matches(model):
            return cls(model, **options)
    raise AdapterNotFoundError(
        f"no adapter knows {type(model).__name__}; the adapters are: {', '.join(names)}. "
        f"Pick one with adapter='name', or {_HOW_TO_EXTEND}."
    )

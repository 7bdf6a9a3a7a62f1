"""The adapter registry: built-in adapters, entry points and ``adapter="auto"``.

Third-party packages register adapters through the entry-point group
``interpret_spectral.adapters`` (the entry point's value is the adapter class), or with
the :func:`register_adapter` decorator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from interpret_spectral.capture.contract import Adapter

__all__ = ["register_adapter", "available_adapters", "get_adapter_class", "resolve_adapter", "AdapterNotFoundError", "ENTRY_POINT_GROUP"]

_REGISTRY: dict[str, type[Adapter]] = {}
_ENTRY_POINTS_LOADED = False
ENTRY_POINT_GROUP = "interpret_spectral.adapters"


class AdapterNotFoundError(LookupError):
    """No adapter knows the model, or the name given is not registered."""


def register_adapter(name: str) -> Callable[[type[Adapter]], type[Adapter]]:
    """Class decorator that registers an adapter under ``name``.

    Examples
    --------
    >>> from interpret_spectral.capture import Adapter, Tap, register_adapter
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
    "write one: subclass interpret_spectral.capture.Adapter, decorate it with "
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
        ``"auto"`` picks the registered adapter whose ``matches(model)`` holds, trying
        them by :attr:`Adapter.priority` (highest first, then by name); a name picks
        that adapter; an instance is used as it is.
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
    candidates = sorted(_REGISTRY.items(), key=lambda item: (-int(item[1].priority), item[0]))
    candidates = [cls for _, cls in candidates]
    for cls in candidates:
        if cls.matches(model):
            return cls(model, **options)
    raise AdapterNotFoundError(
        f"no adapter knows {type(model).__name__}; the adapters are: {', '.join(names)}. "
        f"Pick one with adapter='name', or {_HOW_TO_EXTEND}."
    )

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

    from interpret_spectral.capture.contract import Adapter

    from interpret_spectral.capture.registry import register_adapter

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

from interpret_spectral.store.sites import CAPTURABLE, TOKEN_KINDS, AttentionSite

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



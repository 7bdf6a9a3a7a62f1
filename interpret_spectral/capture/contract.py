"""The adapter contract: what an adapter answers, and the taps the engine reads.

An *adapter* is the only code that knows a backbone.  It answers three questions
for one family of models:

1. which modules are attention layers, in forward order, and their
   :class:`AttentionSite` (stable name, module path, heads, head dim, scale,
   token grid, special tokens);
2. how raw inputs become one forward pass (:meth:`Adapter.preprocess`,
   :meth:`Adapter.run`);
3. how to read the per-head ``q``, ``k``, ``v`` the layer actually used from
   *taps* on its modules (:meth:`Adapter.taps`, :meth:`Adapter.assemble`).

Adapters are declarative about *where* to read: they name module outputs or
inputs (:class:`Tap`), and the capture engine (:mod:`interpret_spectral.capture.engine`)
reads them through forward hooks or nnsight.  This is what makes
``backend="hooks"`` and ``backend="nnsight"`` give identical stores.  An adapter
that must change the model for a batch (processors, a size mode, helper hooks) does
it in :meth:`Adapter.forward_context` and undoes it on every exit path;
:func:`interpret_spectral.testing.check_adapter` checks all of this.

Registering an adapter (the registry is :mod:`interpret_spectral.capture.registry`)::

    from interpret_spectral.capture import Adapter, register_adapter

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
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from interpret_spectral.store.sites import CAPTURABLE, TOKEN_KINDS, AttentionSite

__all__ = ["AttentionSite", "Tap", "Adapter", "split_heads", "check_scale", "check_site", "SCALE_RANGE", "TOKEN_KINDS"]

#: Softmax scales outside this range are refused: no attention layer multiplies ``q k^T`` by 1e30.
SCALE_RANGE = (1e-6, 1e3)
#: Largest head count and head width believed from a model or an option.
_MAX_HEADS, _MAX_HEAD_DIM = 65_536, 65_536

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


def check_scale(scale: object, what: str = "scale") -> float:
    """``scale`` as a float, refused when it is not a finite number in :data:`SCALE_RANGE`.

    Examples
    --------
    >>> check_scale(0.125)
    0.125
    >>> check_scale(1e30)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: scale 1e+30 is outside [1e-06, 1000.0] ...
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) and not hasattr(scale, "__float__"):
        raise TypeError(f"{what} must be a number, got {scale!r}")
    value = float(scale)  # type: ignore[arg-type]
    if not math.isfinite(value) or not SCALE_RANGE[0] <= value <= SCALE_RANGE[1]:
        raise ValueError(
            f"{what} {value!r} is outside [{SCALE_RANGE[0]}, {SCALE_RANGE[1]}]: the softmax scale of q k^T is "
            "usually head_dim ** -0.5 (0.125 for 64 channels); give the factor the layer multiplies its "
            "scores by (1 / divisor for a model that divides)"
        )
    return value


def check_site(site: AttentionSite, adapter: str = "the adapter") -> AttentionSite:
    """Refuse a site whose numbers no attention layer has (the engine checks every site).

    Examples
    --------
    >>> site = AttentionSite("a", "a", 0, 2, 4, 0.5, (1, 2), ("patch", "patch"))
    >>> check_site(site).name
    'a'
    """
    if not isinstance(site, AttentionSite):
        raise TypeError(f"{adapter} gave a {type(site).__name__} for a site; sites(batch) must return AttentionSite")
    for what, value, limit in (("num_heads", site.num_heads, _MAX_HEADS), ("head_dim", site.head_dim, _MAX_HEAD_DIM)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= limit:
            raise ValueError(f"site {site.name!r} from {adapter}: {what} = {value!r} is not an int in [1, {limit}]")
    check_scale(site.scale, f"site {site.name!r} from {adapter}: scale")
    return site


class Adapter(abc.ABC):
    """Base class of every adapter; one instance is bound to one model.

    Subclasses set ``name`` (through :func:`register_adapter`) and implement
    :meth:`matches`, :meth:`sites`, :meth:`taps` and :meth:`assemble`.  They
    override :meth:`preprocess` when the model accepts images, and :meth:`run`
    when one batch needs more than ``model(batch)`` (diffusion: several timesteps).

    A tap may fire several times during :meth:`run` (one call per timestep); the
    engine hands :meth:`assemble` the list of values in call order.
    """

    #: The registered name (set by :func:`~interpret_spectral.capture.registry.register_adapter`).
    name: ClassVar[str] = ""
    #: Whether :meth:`run` calls the model exactly once (required for nnsight).
    single_forward: ClassVar[bool] = True
    #: Order of ``adapter="auto"``: adapters whose :meth:`matches` holds are tried highest
    #: priority first.  0 by default; specific adapters (timm, Hugging Face) use 10 so that
    #: they win over generic ones that match the same model (``torch-mha`` is -10).
    priority: ClassVar[int] = 0

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
            f"the {self.name!r} adapter does not know how {type(self.model).__name__} wants its images "
            "(size, normalisation); pass a model-ready tensor batch (B, C, H, W), resized and normalised "
            "as the model expects, or an adapter for this model family that reads images"
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



"""Reading taps: forward hooks or nnsight tracing around one batch.

The adapter says *what* to read (:class:`~interpret_spectral.capture.contract.Tap`);
:func:`capture_batch` runs the batch inside the adapter's ``forward_context`` and
reads the taps, by PyTorch forward hooks (removed on every exit path) or by nnsight.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch

from interpret_spectral.capture.contract import Adapter, AttentionSite, Tap
from interpret_spectral.capture.placement import to_model

__all__ = ["capture_batch", "unwrap"]


# -- tapping --------------------------------------------------------------------------
def _first(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return value[0]
    return value


@contextlib.contextmanager
def _hooks(module: torch.nn.Module, taps: Sequence[Tap]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Forward hooks that collect every tap; removed on every exit path."""
    collected: dict[str, list[torch.Tensor]] = defaultdict(list)
    handles = []
    try:
        for tap in taps:
            target = module.get_submodule(tap.module) if tap.module else module
            if tap.port == "output":
                def hook(_mod, _args, output, key=tap.key):
                    collected[key].append(_first(output).detach())
                handles.append(target.register_forward_hook(hook))
            else:
                def pre_hook(_mod, args, kwargs, key=tap.key):
                    value = args[0] if args else next(iter(kwargs.values()))
                    collected[key].append(value.detach())
                handles.append(target.register_forward_pre_hook(pre_hook, with_kwargs=True))
        yield collected
    finally:
        for handle in handles:
            handle.remove()


def _run_nnsight(adapter: Adapter, batch: Any, taps: Sequence[Tap], model: Any) -> dict[str, list[torch.Tensor]]:
    try:
        from nnsight import NNsight
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("backend='nnsight' needs nnsight: pip install 'interpret-spectral[nnsight]'") from error
    if not adapter.single_forward:
        raise ValueError(
            f"adapter {adapter.name!r} runs several forward passes per batch; use backend='hooks' with it"
        )
    wrapped = model if _is_nnsight(model) else NNsight(adapter.model_module())
    args, kwargs = adapter.call_args(batch)
    # nnsight's cache reads modules in whatever order they run, unlike envoy access,
    # which must follow execution order.
    # A module can be reached by several paths (transformer-lens bridges alias
    # ``blocks.0.attn.hook_q`` to a module registered under four paths); ask for all of them.
    module = adapter.model_module()
    aliases = _module_paths(module)
    candidates = {
        tap.module: list(dict.fromkeys([tap.module, *aliases.get(id(module.get_submodule(tap.module)), [])]))
        if tap.module else [""]
        for tap in taps
    }
    names = list(dict.fromkeys(f"model.{path}" if path else "model" for paths in candidates.values() for path in paths))
    with torch.no_grad(), wrapped.trace(*args, **kwargs) as tracer:
        cache = tracer.cache(
            modules=names, device=None, include_inputs=any(tap.port == "input" for tap in taps)
        )
    result = {}
    for tap in taps:
        keys = [f"model.{path}" if path else "model" for path in candidates[tap.module]]
        entry = next((cache[key] for key in keys if _cached(cache, key)), None)
        if entry is None:
            raise RuntimeError(f"nnsight did not record module {tap.module!r} in the forward pass")
        value = entry.output if tap.port == "output" else entry.input
        result[tap.key] = [_first(value).detach()]
    return result


def _module_paths(module: torch.nn.Module) -> dict[int, list[str]]:
    paths: dict[int, list[str]] = {}
    for path, sub in module.named_modules(remove_duplicate=False):
        paths.setdefault(id(sub), []).append(path)
    return paths


def _cached(cache: Any, key: str) -> bool:
    try:
        entry = cache[key]
    except (KeyError, AttributeError):
        return False
    return entry is not None


def _is_nnsight(model: Any) -> bool:
    """Whether ``model`` is an nnsight wrapper (``NNsight``, ``LanguageModel``, ``DiffusionModel``).

    Every nnsight wrapper is an ``Envoy``; torch modules inside nnsight are not.
    """
    import sys

    if "nnsight" not in sys.modules:
        return False
    from nnsight import Envoy

    return isinstance(model, Envoy)


def unwrap(model: Any) -> Any:
    """The torch model inside an nnsight wrapper (``NNsight``, ``LanguageModel``, ...)."""
    if _is_nnsight(model):
        inner = getattr(model, "_module", None)  # nnsight >= 0.5
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "_model", None)  # older nnsight
        if not isinstance(inner, torch.nn.Module):
            raise TypeError(f"cannot find the torch model inside {type(model).__name__}")
        return inner
    return model


def capture_batch(
    adapter: Adapter,
    batch: Any,
    sites: Sequence[AttentionSite],
    capture: Sequence[str] = ("q", "k", "v"),
    backend: Literal["hooks", "nnsight"] = "hooks",
    extra_taps: Sequence[Tap] = (),
    model: Any = None,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, list[torch.Tensor]]]:
    """Run one model-ready batch and return the assembled arrays per site.

    Parameters
    ----------
    adapter : Adapter
        The model's adapter.
    batch : object
        A model-ready batch (what :meth:`Adapter.preprocess` returns).
    sites : sequence of AttentionSite
        The sites to read.
    capture : sequence of str
        Variables to assemble.
    backend : {"hooks", "nnsight"}
        How modules are read.
    extra_taps : sequence of Tap
        Further taps whose raw values are returned too (e.g. the output taps of
        the rebuild check).
    model : object, optional
        The user's model object (an nnsight wrapper is reused as it is).

    Returns
    -------
    arrays : dict
        ``arrays[site.name][var]`` as torch tensors.
    raw : dict
        Raw tapped values by :attr:`Tap.key`.

    Examples
    --------
    >>> arrays, raw = capture_batch(adapter, batch, adapter.sites(batch))  # doctest: +SKIP
    """
    taps: list[Tap] = []
    for site in sites:
        for tap in adapter.taps(site, capture):
            if tap not in taps:
                taps.append(tap)
    for tap in extra_taps:
        if tap not in taps:
            taps.append(tap)
    module = adapter.model_module()
    if backend not in ("hooks", "nnsight"):
        raise ValueError(f"backend must be 'hooks' or 'nnsight', got {backend!r}")
    batch = to_model(adapter, batch)
    with adapter.forward_context(batch):
        if backend == "hooks":
            with _hooks(module, taps) as collected:
                adapter.run(batch)
            tapped = dict(collected)
        else:
            tapped = _run_nnsight(adapter, batch, taps, model if model is not None else adapter.model)
    missing = [tap.key for tap in taps if not tapped.get(tap.key)]
    if missing:
        raise RuntimeError(
            f"adapter {adapter.name!r}: the forward pass never reached {missing[:3]}; "
            "the model's structure differs from what the adapter expects"
        )
    arrays = {site.name: adapter.assemble(site, tapped, capture) for site in sites}
    return arrays, tapped

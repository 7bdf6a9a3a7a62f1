"""interpret_spectral: record attention q/k/v of any attention model and decompose it spectrally.

The flow::

    model + inputs --probe()--> store --decompose()--> eigenvectors --segment()--> labels

Examples
--------
>>> from interpret_spectral import probe, decompose, segment
>>> store = probe(model, images)  # doctest: +SKIP
>>> labels = segment(decompose(store, graph="qk"))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from interpret_spectral._version import __version__

# The public names load on first use (PEP 562), so that ``import interpret_spectral``
# and ``interpret-spectral --help`` stay fast (no torch, no xarray until needed).
_EXPORTS = {
    "segment": "interpret_spectral.segmentation",
    "upsample_labels": "interpret_spectral.segmentation",
    "decompose_dataset": "interpret_spectral.spectral.dataset",
    "matched_miou": "interpret_spectral.evaluation.metrics",
    "oracle_miou": "interpret_spectral.evaluation.metrics",
    "probe": "interpret_spectral.capture.engine",
    "Adapter": "interpret_spectral.capture.contract",
    "AttentionSite": "interpret_spectral.capture.contract",
    "Tap": "interpret_spectral.capture.contract",
    "available_adapters": "interpret_spectral.capture.registry",
    "register_adapter": "interpret_spectral.capture.registry",
    "resolve_adapter": "interpret_spectral.capture.registry",
    "decompose": "interpret_spectral.spectral.decompose",
    "site_contributions": "interpret_spectral.spectral.decompose",
    "create_store": "interpret_spectral.store.writer",
    "open_store": "interpret_spectral.store.reader",
    "validate_store": "interpret_spectral.store.format",
}

if TYPE_CHECKING:
    from interpret_spectral.capture.contract import Adapter, AttentionSite, Tap
    from interpret_spectral.capture.engine import probe
    from interpret_spectral.capture.registry import available_adapters, register_adapter, resolve_adapter
    from interpret_spectral.evaluation.metrics import matched_miou, oracle_miou
    from interpret_spectral.segmentation import segment, upsample_labels
    from interpret_spectral.spectral.dataset import decompose_dataset
    from interpret_spectral.spectral.decompose import decompose, site_contributions
    from interpret_spectral.store.format import validate_store
    from interpret_spectral.store.reader import open_store
    from interpret_spectral.store.writer import create_store


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'interpret_spectral' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "__version__",
    "probe",
    "open_store",
    "create_store",
    "validate_store",
    "decompose",
    "decompose_dataset",
    "site_contributions",
    "segment",
    "upsample_labels",
    "oracle_miou",
    "matched_miou",
    "Adapter",
    "AttentionSite",
    "Tap",
    "register_adapter",
    "available_adapters",
    "resolve_adapter",
]

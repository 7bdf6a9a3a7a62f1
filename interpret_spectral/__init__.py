"""interpret_spectral: record attention q/k/v of any attention model and decompose it spectrally.

The flow (see DESIGN.md)::

    model + inputs --probe()--> store --decompose()--> eigenvectors --segment()--> labels

Examples
--------
>>> from interpret_spectral import probe, open_store
"""

__version__ = "0.1.0"

from interpret_spectral.probe import probe
from interpret_spectral.sites import (
    Adapter,
    AttentionSite,
    Tap,
    available_adapters,
    register_adapter,
    resolve_adapter,
)
from interpret_spectral.store import create_store, open_store, validate_store

__all__ = [
    "__version__",
    "probe",
    "open_store",
    "create_store",
    "validate_store",
    "Adapter",
    "AttentionSite",
    "Tap",
    "register_adapter",
    "available_adapters",
    "resolve_adapter",
]

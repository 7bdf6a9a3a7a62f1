"""interpret_spectral: record attention q/k/v of any attention model and decompose it spectrally.

The flow (see DESIGN.md)::

    model + inputs --probe()--> store --decompose()--> eigenvectors --segment()--> labels

Examples
--------
>>> from interpret_spectral import probe, decompose, segment
>>> store = probe(model, images)  # doctest: +SKIP
>>> labels = segment(decompose(store, graph="qk"))  # doctest: +SKIP
"""

__version__ = "0.1.0"

from interpret_spectral.cluster import segment, upsample_labels
from interpret_spectral.dataset_spectral import decompose_dataset
from interpret_spectral.metrics import matched_miou, oracle_miou
from interpret_spectral.probe import probe
from interpret_spectral.sites import (
    Adapter,
    AttentionSite,
    Tap,
    available_adapters,
    register_adapter,
    resolve_adapter,
)
from interpret_spectral.spectral import decompose, site_contributions
from interpret_spectral.store import create_store, open_store, validate_store

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

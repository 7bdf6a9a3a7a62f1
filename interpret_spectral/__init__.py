"""interpret_spectral: record attention q/k/v of any attention model and decompose it spectrally.

The flow::

    model + inputs --probe()--> store --decompose()--> eigenvectors --segment()--> labels

Examples
--------
>>> from interpret_spectral import probe, decompose, segment
>>> store = probe(model, images)  # doctest: +SKIP
>>> labels = segment(decompose(store, graph="qk"))  # doctest: +SKIP
"""

from interpret_spectral._version import __version__

from interpret_spectral.segmentation.kmeans import segment, upsample_labels
from interpret_spectral.spectral.dataset import decompose_dataset
from interpret_spectral.evaluation.metrics import matched_miou, oracle_miou
from interpret_spectral.capture.engine import probe
from interpret_spectral.capture.contract import Adapter, AttentionSite, Tap
from interpret_spectral.capture.registry import available_adapters, register_adapter, resolve_adapter
from interpret_spectral.spectral.decompose import decompose, site_contributions
from interpret_spectral.store.writer import create_store
from interpret_spectral.store.reader import open_store
from interpret_spectral.store.format import validate_store

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

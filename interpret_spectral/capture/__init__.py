"""Capture: the adapter contract and registry, and the engine that records q/k/v.

Adapters (one file per backbone family, in :mod:`interpret_spectral.adapters`) say
*where* a model's attention lives; the engine reads it with forward hooks or nnsight
and writes a store.
"""

from interpret_spectral.capture.contract import Adapter, AttentionSite, Tap, split_heads
from interpret_spectral.capture.engine import capture_batch, probe, rebuild_errors, select_sites
from interpret_spectral.capture.registry import (
    AdapterNotFoundError,
    available_adapters,
    get_adapter_class,
    register_adapter,
    resolve_adapter,
)

__all__ = [
    "Adapter", "AttentionSite", "Tap", "split_heads", "probe", "capture_batch", "rebuild_errors",
    "select_sites", "AdapterNotFoundError", "available_adapters", "get_adapter_class",
    "register_adapter", "resolve_adapter",
]

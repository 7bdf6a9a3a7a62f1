"""Capture: the adapter contract and registry, and the engine that records q/k/v.

Adapters (one file per backbone family, in :mod:`interpret_spectral.adapters`) say
*where* a model's attention lives; the engine reads it with forward hooks or nnsight
and writes a store.  Modules: ``contract`` (Adapter, Tap), ``registry``, ``inputs``
(reading image files), ``preprocess`` (resize and normalise), ``placement`` (device and
dtype), ``tapping`` (hooks / nnsight), ``rebuild`` (the correctness check), ``engine``
(``probe``).  The conformance kit is :mod:`interpret_spectral.testing`.
"""

from interpret_spectral.capture.contract import Adapter, AttentionSite, Tap, check_scale, split_heads
from interpret_spectral.capture.engine import NonFiniteError, probe, select_sites
from interpret_spectral.capture.inputs import ImageReadError, load_image
from interpret_spectral.capture.preprocess import preprocess_images
from interpret_spectral.capture.rebuild import rebuild_errors
from interpret_spectral.capture.tapping import capture_batch
from interpret_spectral.capture.registry import (
    AdapterNotFoundError,
    available_adapters,
    get_adapter_class,
    register_adapter,
    resolve_adapter,
)

__all__ = [
    "Adapter", "AttentionSite", "Tap", "split_heads", "check_scale", "probe", "capture_batch", "rebuild_errors",
    "select_sites", "NonFiniteError", "ImageReadError", "load_image", "preprocess_images", "AdapterNotFoundError", "available_adapters", "get_adapter_class",
    "register_adapter", "resolve_adapter",
]

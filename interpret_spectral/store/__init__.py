"""Stores: the format, the writer and the one reading API.

Examples
--------
>>> from interpret_spectral.store import open_store  # doctest: +SKIP
>>> store = open_store("activations.h5")  # doctest: +SKIP
"""

from interpret_spectral.store import accessor as _accessor  # registers store.spectral
from interpret_spectral.store.format import (
    FORMAT, FORMAT_VERSION, StoreError, StoreIntegrityError, StoreLockedError, validate_store,
)
from interpret_spectral.store.reader import (
    open_store, patch_tokens, require_complete, sample_ids, site_names, verify_store,
)
from interpret_spectral.store.writer import StoreWriter, create_store

__all__ = [
    "FORMAT", "FORMAT_VERSION", "StoreError", "StoreIntegrityError", "StoreLockedError", "validate_store",
    "open_store", "patch_tokens", "require_complete", "sample_ids", "site_names", "verify_store",
    "StoreWriter", "create_store",
]
del _accessor

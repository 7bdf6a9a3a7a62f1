"""The store format: its name, version, errors and validation.

A store is an :class:`xarray.DataTree` saved as one netCDF4-compatible HDF5 file:

- the root holds the dimension ``sample`` (string ids, unlimited on disk), the
  attributes ``format``, ``format_version``, ``model``, ``adapter``,
  ``package_version`` and user metadata, and optionally ``pixels``
  ``(sample, y, x, rgb)`` uint8;
- one group per attention site, named by the site's stable name and written in
  forward order, with ``q``, ``k``, ``v`` of dims ``(sample, [timestep,] head,
  token, channel)``, optionally ``features`` ``(sample, [timestep,] token,
  feature)``, coordinates ``token_y``, ``token_x``, ``token_kind`` and the site
  attributes ``module``, ``order``, ``grid_h``, ``grid_w``, ``num_heads``,
  ``head_dim``, ``scale``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["FORMAT", "FORMAT_VERSION", "StoreError", "validate_store"]

FORMAT = "interpret_spectral.store"
FORMAT_VERSION = 1
_STRING_DTYPE = "S"


class StoreError(ValueError):
    """A file or tree that is not a readable store of a supported version."""


def _package_version() -> str:
    from interpret_spectral._version import __version__

    return __version__


def _json_safe_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """netCDF attributes are numbers, strings or 1-D arrays; anything else goes to JSON text."""
    safe: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)):
            safe[key] = int(value)
        elif isinstance(value, (str, int, float, np.integer, np.floating)):
            safe[key] = value
        elif isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value
        ):
            safe[key] = np.asarray(value)
        else:
            safe[key] = json.dumps(value, default=str)
    return safe



def validate_store(tree: xr.DataTree, source: str = "store") -> None:
    """Check that ``tree`` follows the store format; raise :class:`StoreError` if not.

    Examples
    --------
    >>> import xarray as xr
    >>> validate_store(xr.DataTree())  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    StoreError: store is not an interpret_spectral store ...
    """
    fmt = tree.attrs.get("format")
    if fmt != FORMAT:
        raise StoreError(
            f"{source} is not an interpret_spectral store (root attribute format={fmt!r}, expected {FORMAT!r}); "
            "make stores with interpret_spectral.probe()"
        )
    version = int(tree.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{source} has format_version {version}, newer than this interpret_spectral reads "
            f"({FORMAT_VERSION}); upgrade interpret_spectral"
        )
    if version < 1:
        raise StoreError(f"{source} has an invalid format_version {version}")
    if "sample" not in tree.dims:
        raise StoreError(f"{source} has no 'sample' dimension at its root")
    if not tree.children:
        raise StoreError(f"{source} has no attention-site groups")
    for name, node in tree.children.items():
        missing = [a for a in ("module", "order", "grid_h", "grid_w", "num_heads", "head_dim", "scale") if a not in node.attrs]
        if missing:
            raise StoreError(f"{source}: group {name!r} lacks site attributes {missing}")
        for coord in ("token_y", "token_x", "token_kind"):
            if coord not in node.coords:
                raise StoreError(f"{source}: group {name!r} lacks coordinate {coord!r}")



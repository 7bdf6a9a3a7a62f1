"""The store format: its name, version, errors, attributes and validation.

A store is an :class:`xarray.DataTree` saved as one netCDF4-compatible HDF5 file:

- the root holds the dimension ``sample`` (string ids, unlimited on disk) with
  ``sample_crc32`` (CRC-32 of every id), ``original_height`` and ``original_width``
  (the input image's size before preprocessing, ``-1`` when unknown), optionally
  ``pixels`` ``(sample, y, x, rgb)`` uint8, and the attributes ``format``,
  ``format_version``, ``model``, ``adapter``, ``package_version``,
  ``samples_requested``, ``writing_finished``, ``preprocessing`` and user metadata;
- one group per attention site, named by the site's stable name and written in
  forward order, with ``q``, ``k``, ``v`` of dims ``(sample, [timestep,] head,
  token, channel)``, optionally ``features`` ``(sample, [timestep,] token,
  feature)``, coordinates ``token_y``, ``token_x``, ``token_kind`` and the site
  attributes ``module``, ``order``, ``grid_h``, ``grid_w``, ``num_heads``,
  ``head_dim``, ``scale``.

Every numeric array carries HDF5's Fletcher-32 checksum; every variable has CF
``long_name`` and ``description`` attributes (:data:`DESCRIPTIONS`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from interpret_spectral.store.sites import TOKEN_KINDS

__all__ = [
    "FORMAT", "FORMAT_VERSION", "StoreError", "StoreLockedError", "StoreIntegrityError",
    "DESCRIPTIONS", "SITE_ATTRS", "MAX_SCALE", "all_finite", "parse_format_version", "plain_attrs", "validate_store",
]

FORMAT = "interpret_spectral.store"
FORMAT_VERSION = 1
_STRING_DTYPE = "S"
#: Site attributes every site group holds.
SITE_ATTRS = ("module", "order", "grid_h", "grid_w", "num_heads", "head_dim", "scale")
#: Largest softmax scale a store may declare (usual scales are ``head_dim ** -0.5`` < 1).
MAX_SCALE = 1e4

#: CF ``long_name`` and ``description`` of every variable a store holds.
DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "sample": ("sample id", "Identifier of the input sample (file stem, image-<i>, or given by the user)."),
    "sample_crc32": ("CRC-32 of the sample id", "zlib.crc32 of the UTF-8 sample id, to detect damaged ids."),
    "original_height": ("original image height", "Height in pixels of the input image before preprocessing; -1 when unknown (tensor input)."),
    "original_width": ("original image width", "Width in pixels of the input image before preprocessing; -1 when unknown (tensor input)."),
    "pixels": ("input image", "The preprocessed input image as the model saw it, unnormalised, RGB uint8."),
    "q": ("attention queries", "Queries of every head as the softmax saw them (after any q-norm or rotary embedding), per token."),
    "k": ("attention keys", "Keys of every head as the softmax saw them (after any k-norm or rotary embedding), per token."),
    "v": ("attention values", "Values of every head as multiplied by the attention weights, per token."),
    "features": ("block output tokens", "Output tokens of the block that holds this attention layer."),
    "token_y": ("token grid row", "Row of the token on the patch grid; -1 for special tokens (cls, register, ...)."),
    "token_x": ("token grid column", "Column of the token on the patch grid; -1 for special tokens (cls, register, ...)."),
    "token_kind": ("token kind", "Kind of the token: " + ", ".join(TOKEN_KINDS) + "."),
    "timestep": ("diffusion timestep", "Diffusion timestep at which the attention was recorded."),
}


class StoreError(ValueError):
    """A file or tree that is not a readable store of a supported version."""


class StoreLockedError(StoreError):
    """A store held open for writing by another process (intact, only locked)."""


class StoreIntegrityError(StoreError):
    """Data in a store whose checksum does not match: the file is damaged."""


def _package_version() -> str:
    from interpret_spectral._version import __version__

    return __version__


def all_finite(values: Any) -> bool:
    """Whether every element of a numpy array or torch tensor is finite (no NaN, no infinity).

    One float64 sum decides for float16/float32 data (a NaN or an infinity makes the
    sum non-finite, and float64 cannot overflow on a sum of float32 values), which
    reads the data once without allocating a mask; only a non-finite sum (or float64
    data, whose sum can overflow) is checked element by element.

    Examples
    --------
    >>> import numpy as np
    >>> all_finite(np.ones((2, 3), dtype=np.float32)), all_finite(np.array([1.0, np.nan]))
    (True, False)
    >>> all_finite(np.array([np.inf, -np.inf], dtype=np.float32))
    False
    """
    if hasattr(values, "detach"):  # a torch tensor
        import torch

        if values.dtype in (torch.float16, torch.bfloat16, torch.float32) and values.numel():
            if math.isfinite(float(values.sum(dtype=torch.float64))):
                return True
        return bool(torch.isfinite(values).all())
    array = np.asarray(values)
    if array.dtype.kind != "f" and array.dtype.kind != "c":
        return True
    if array.dtype in (np.float16, np.float32) and array.size:
        if math.isfinite(float(np.add.reduce(array, axis=None, dtype=np.float64))):
            return True
    return bool(np.isfinite(array).all())


def parse_format_version(value: Any, source: str = "store") -> int:
    """The ``format_version`` attribute as an int, or a :class:`StoreError` saying what is wrong.

    Examples
    --------
    >>> parse_format_version(np.int64(1))
    1
    >>> parse_format_version("one")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    StoreError: store has format_version 'one', not a whole number ...
    """
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, (bool, np.bool_)) or value is None:
        raise StoreError(f"{source} has format_version {value!r}, not a whole number; it was not written by interpret_spectral")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise StoreError(
        f"{source} has format_version {value!r}, not a whole number; it was not written by "
        "interpret_spectral (or was edited): rewrite it with interpret_spectral.probe()"
    )


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if value is None:
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}", item, out)
        return
    if isinstance(value, (bool, np.bool_)):
        out[prefix] = int(value)
    elif isinstance(value, (str, int, float, np.integer, np.floating)):
        out[prefix] = value
    elif isinstance(value, (list, tuple, np.ndarray)) and len(value) and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) for v in value
    ):
        out[prefix] = np.asarray(value)
    elif isinstance(value, (list, tuple)) and len(value) and all(isinstance(v, str) for v in value):
        out[prefix] = [str(v) for v in value]
    else:
        out[prefix] = json.dumps(value, default=str)


def plain_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes as netCDF holds them: plain numbers, strings and 1-D arrays wherever possible.

    Booleans become 0/1, ``None`` is left out, lists of numbers or of strings become
    arrays, nested mappings become dotted names (``{"opts": {"size": 224}}`` gives
    ``opts.size = 224``); only what netCDF cannot hold (mixed or nested lists) is JSON text.

    Examples
    --------
    >>> sorted(plain_attrs({"a": True, "b": None, "opts": {"size": 224}, "kinds": ["q", "k"]}).items())
    [('a', 1), ('kinds', ['q', 'k']), ('opts.size', 224)]
    """
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        _flatten(str(key), value, out)
    return out


# Kept for callers of the previous name.
_json_safe_attrs = plain_attrs


def _positive_int(node_attrs: Mapping[str, Any], key: str, where: str) -> int:
    value = node_attrs[key]
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(())
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StoreError(f"{where}: attribute {key}={value!r} is not a non-negative whole number")
    return int(value)


def _check_site(tree: xr.DataTree, name: str, source: str) -> None:
    node = tree[name]
    where = f"{source}: site {name!r}"
    missing = [a for a in SITE_ATTRS if a not in node.attrs]
    if missing:
        raise StoreError(f"{where} lacks site attributes {missing}; the file was not written by interpret_spectral or was edited")
    for coord in ("token_y", "token_x", "token_kind"):
        if coord not in node.coords:
            raise StoreError(f"{where} lacks coordinate {coord!r}")
    order = _positive_int(node.attrs, "order", where)
    del order
    grid_h, grid_w = _positive_int(node.attrs, "grid_h", where), _positive_int(node.attrs, "grid_w", where)
    num_heads, head_dim = _positive_int(node.attrs, "num_heads", where), _positive_int(node.attrs, "head_dim", where)
    try:
        scale = float(np.asarray(node.attrs["scale"]).reshape(()))
    except (TypeError, ValueError):
        raise StoreError(f"{where}: attribute scale={node.attrs['scale']!r} is not a number") from None
    if not (math.isfinite(scale) and 0 < scale <= MAX_SCALE):
        raise StoreError(f"{where}: attribute scale={scale!r} is not a softmax scale (finite, in (0, {MAX_SCALE:g}])")
    n_tokens = node.sizes.get("token")
    if n_tokens is None:
        raise StoreError(f"{where} has no 'token' dimension")
    token_y = np.asarray(node["token_y"].values)
    token_x = np.asarray(node["token_x"].values)
    kinds = np.asarray(node["token_kind"].values).astype(str)
    unknown = sorted(set(kinds.tolist()) - set(TOKEN_KINDS))
    if unknown:
        raise StoreError(f"{where}: token_kind holds unknown kinds {unknown[:3]}; the file is damaged or was edited")
    patch = kinds == "patch"
    if not np.array_equal(token_y >= 0, patch) or not np.array_equal(token_x >= 0, patch):
        raise StoreError(f"{where}: token_y/token_x do not mark exactly the 'patch' tokens; the file is damaged or was edited")
    n_patch = int(patch.sum())
    if grid_h * grid_w != n_patch:
        raise StoreError(
            f"{where}: grid_h*grid_w = {grid_h}x{grid_w} = {grid_h * grid_w} but the site holds {n_patch} patch "
            "tokens; the attributes were edited or the file is damaged"
        )
    if n_patch and (token_y[patch].max() >= grid_h or token_x[patch].max() >= grid_w or len(
            set(zip(token_y[patch].tolist(), token_x[patch].tolist()))) != n_patch):
        raise StoreError(f"{where}: token_y/token_x do not cover the {grid_h}x{grid_w} grid once each")
    for var, node_var in node.data_vars.items():
        dims = node_var.dims
        if dims[:1] != ("sample",) or "token" not in dims:
            continue
        if var in ("q", "k", "v"):
            if node.sizes.get("head") != num_heads:
                raise StoreError(
                    f"{where}: attribute num_heads={num_heads} but {var!r} holds {node.sizes.get('head')} heads; "
                    "the attributes were edited or the file is damaged"
                )
            if node.sizes.get("channel") != head_dim:
                raise StoreError(
                    f"{where}: attribute head_dim={head_dim} but {var!r} holds {node.sizes.get('channel')} channels per head"
                )


def validate_store(tree: xr.DataTree, source: str = "store") -> None:
    """Check that ``tree`` follows the store format; raise :class:`StoreError` if not.

    Every dimension, grid, head count and scale an analysis allocates from is checked
    against the data present: ``grid_h * grid_w`` against the patch tokens,
    ``num_heads``/``head_dim`` against the ``q``/``k``/``v`` arrays, the scale against
    a finite range.  Nothing large is read (only the token coordinates).

    Examples
    --------
    >>> import xarray as xr
    >>> validate_store(xr.DataTree())  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    StoreError: store is not an interpret_spectral store ...
    """
    if not isinstance(tree, xr.DataTree):
        raise TypeError(f"expected a store (xarray.DataTree from probe() or open_store()), got {type(tree).__name__}")
    fmt = tree.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    if fmt != FORMAT:
        raise StoreError(
            f"{source} is not an interpret_spectral store (root attribute format={fmt!r}, expected {FORMAT!r}); "
            "make stores with interpret_spectral.probe()"
        )
    if "format_version" not in tree.attrs:
        raise StoreError(f"{source} has no format_version attribute; it was not written by interpret_spectral")
    version = parse_format_version(tree.attrs["format_version"], source)
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{source} has format_version {version}, newer than this interpret_spectral reads "
            f"({FORMAT_VERSION}); upgrade interpret_spectral"
        )
    if version < 1:
        raise StoreError(f"{source} has an invalid format_version {version} (versions start at 1)")
    if "sample" not in tree.dims:
        raise StoreError(f"{source} has no 'sample' dimension at its root")
    if not tree.children:
        raise StoreError(f"{source} has no attention-site groups")
    for name in tree.children:
        _check_site(tree, name, source)

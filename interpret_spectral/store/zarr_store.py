"""Zarr v3 stores: the same tree as the HDF5 format, one folder of chunk files instead of one file.

A zarr store (a folder named ``*.zarr``) holds exactly what an HDF5 store holds: the
root group with ``sample`` (variable-length UTF-8 ids), ``sample_crc32``,
``original_height``, ``original_width``, optionally ``pixels``, the extra-dimension
coordinates and the root attributes; one group per attention site with ``q``, ``k``,
``v`` (and ``features``), the coordinates ``token_y``, ``token_x``, ``token_kind`` and
the site attributes.  Every array carries its ``dimension_names`` (zarr v3 metadata)
and the CF ``long_name``/``description`` attributes, and every chunk ends in a
``crc32c`` checksum (the zarr v3 codec; the equivalent of HDF5's Fletcher-32), so a
flipped byte is a :class:`~interpret_spectral.store.format.StoreIntegrityError`,
never a changed value.  Nothing is pickled and no array has an object dtype on disk.

Zarr is the format object stores and concurrent writers need: every chunk is its own
object, written whole (atomically on a local disk), so any number of processes may
write their own stores or shards at once.  This module reads them
(:func:`inspect_zarr`, :func:`read_zarr_tree`; ``open_store("x.zarr")`` is the entry
point), from a local folder or, read-only, from an fsspec URL (``s3://``, ``gs://``,
``memory://``: :mod:`interpret_spectral.store.remote`);
:mod:`interpret_spectral.store.zarr_writer` writes them (local folders only).  It needs
``zarr>=3`` (``pip install 'interpret-spectral[scale]'``), imported only when a zarr
store is used.

In plain xarray a complete zarr store is one call,
``xr.open_datatree("x.zarr", engine="zarr", consolidated=False)``.

Examples
--------
>>> is_zarr_store("/no/such/store.h5"), is_zarr_path("out/store.zarr")
(False, True)
>>> [type(codec).__name__ for codec in zarr_codecs("gzip")]
['GzipCodec', 'Crc32cCodec']
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from interpret_spectral.store.files import (
    MAX_UNNAMED_ROWS, FileFacts, array_filters, id_checksums, is_checksum_error,
)
from interpret_spectral.store.format import FORMAT, StoreError, StoreIntegrityError, parse_format_version
from interpret_spectral.store.remote import RemotePath, is_url, location, refuse_url

__all__ = [
    "ZARR_SUFFIX", "is_zarr_path", "is_zarr_store", "zarr_codecs", "json_attrs", "create_zarr_group", "open_zarr_group",
    "inspect_zarr", "read_zarr_tree", "zarr_layout",
]

#: The name ending of a zarr store (a folder).
ZARR_SUFFIX = ".zarr"
_PARTIAL = re.compile(r"\.partial-\d+$")
_INSTALL = "zarr stores need zarr>=3: pip install 'interpret-spectral[scale]' (or pip install 'zarr>=3')"


def _zarr() -> Any:
    try:
        import zarr
    except ImportError as error:
        raise ImportError(_INSTALL) from error
    if int(zarr.__version__.split(".")[0]) < 3:
        raise ImportError(f"{_INSTALL}; zarr {zarr.__version__} is installed")
    return zarr


def is_zarr_path(path: str | os.PathLike[str] | None) -> bool:
    """Whether a store to be written at ``path`` is a zarr store: its name ends in ``.zarr``.

    The temporary name of one (``x.zarr.partial-<pid>``, as
    :func:`~interpret_spectral.store.atomic.replacing_file` gives) counts too.

    Examples
    --------
    >>> is_zarr_path("run/store.zarr"), is_zarr_path("run/shard-00001.zarr.partial-42"), is_zarr_path("s.h5")
    (True, True, False)
    >>> is_zarr_path(None)
    False
    """
    if path is None:
        return False
    name = str(path).rstrip("/").rsplit("/", 1)[-1] if is_url(path) else Path(path).name  # no filesystem needed
    return _PARTIAL.sub("", name).endswith(ZARR_SUFFIX)


def is_zarr_store(path: str | os.PathLike[str] | RemotePath) -> bool:
    """Whether ``path`` is a folder to read as a zarr store: named ``*.zarr`` or holding ``zarr.json``.

    ``path`` may be an fsspec URL (:mod:`interpret_spectral.store.remote`).

    Examples
    --------
    >>> import tempfile
    >>> is_zarr_store(tempfile.mkdtemp())
    False
    """
    path = location(path)
    return path.is_dir() and (is_zarr_path(path) or (path / "zarr.json").is_file())


def zarr_codecs(compression: str | None = None, level: int = 4) -> list[Any]:
    """The zarr v3 bytes-to-bytes codecs of a store array: optional gzip, then ``crc32c`` (always).

    The checksum is computed over the stored bytes (after compression), so any damaged
    byte of a chunk fails it.

    Parameters
    ----------
    compression : {None, "gzip"}
        ``lzf`` is an HDF5 filter with no zarr v3 codec: refused.
    level : int
        gzip level, 0-9.

    Examples
    --------
    >>> [type(codec).__name__ for codec in zarr_codecs()]
    ['Crc32cCodec']
    >>> zarr_codecs("lzf")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: compression 'lzf' is an HDF5 filter ...
    """
    array_filters(compression, level)  # the one check of the options
    if compression == "lzf":
        raise ValueError("compression 'lzf' is an HDF5 filter without a zarr v3 codec; a zarr store takes "
                         "compression='gzip' or None")
    _zarr()
    from zarr.codecs import Crc32cCodec, GzipCodec

    return ([GzipCodec(level=int(level))] if compression == "gzip" else []) + [Crc32cCodec()]


def json_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes as zarr's JSON holds them: numpy arrays as lists, numpy scalars as numbers.

    Give it :func:`~interpret_spectral.store.format.plain_attrs` output.

    Examples
    --------
    >>> json_attrs({"shape": np.array([3, 4]), "n": np.int64(2), "name": "x"})
    {'shape': [3, 4], 'n': 2, 'name': 'x'}
    """
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        out[str(key)] = value
    return out


def _read_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes as the HDF5 store opens them: lists of numbers as numpy arrays."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, list) and value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            value = np.asarray(value)
        out[str(key)] = value
    return out


def _damage(path: Path | RemotePath, error: BaseException, what: str) -> StoreError:
    if is_checksum_error(error):
        return StoreIntegrityError(
            f"{path} is damaged: checksum error reading {what}; restore the store or rerun the probe into a new one"
        )
    return StoreError(
        f"{path} cannot be read as a zarr v3 store ({type(error).__name__} reading {what}: {error}); it is "
        "damaged or not a store: rerun the probe"
    )


def open_zarr_group(path: str | os.PathLike[str] | RemotePath, mode: str = "r") -> Any:
    """Open the root group of a zarr v3 store (metadata read as it is on disk, never consolidated).

    Parameters
    ----------
    path : path-like or str
        The store's folder, or its fsspec URL (read only: zarr reads it through its
        ``FsspecStore``).
    mode : {"r", "r+"}
        Read only, or read and write (the writer's; local folders only).

    Raises
    ------
    StoreError
        No ``zarr.json`` (not a zarr store, or zarr v2), or metadata that cannot be read.

    Examples
    --------
    >>> open_zarr_group("/no/such/store.zarr")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    StoreError: /no/such/store.zarr is not a zarr v3 store (no zarr.json) ...
    """
    path = location(path)
    zarr = _zarr()
    if mode != "r":
        refuse_url(path, "writing a zarr store")
    if not (path / "zarr.json").is_file():
        v2 = (path / ".zgroup").is_file() or (path / ".zarray").is_file()
        raise StoreError(
            f"{path} is not a zarr v3 store (no zarr.json{'; it is zarr v2' if v2 else ''}); give a store written by "
            "interpret_spectral.probe(..., out='name.zarr')"
        )
    try:
        store: Any = str(path)
        if isinstance(path, RemotePath):
            from zarr.storage import FsspecStore

            store = FsspecStore.from_url(path.url, read_only=True)
        return zarr.open_group(store=store, mode=mode, zarr_format=3, use_consolidated=False)
    except KeyboardInterrupt:
        raise
    except Exception as error:
        raise _damage(path, error, "its metadata") from error


def create_zarr_group(path: str | os.PathLike[str], attrs: Mapping[str, Any]) -> Any:
    """Create the root group of a new zarr v3 store at ``path`` (which must not exist).

    Examples
    --------
    >>> import tempfile
    >>> group = create_zarr_group(Path(tempfile.mkdtemp()) / "new.zarr", {"a": 1})
    >>> dict(group.attrs)
    {'a': 1}
    """
    return _zarr().open_group(store=str(path), mode="w-", zarr_format=3, attributes=dict(attrs))


def _dims(array: Any, where: str, path: Path | RemotePath) -> tuple[str, ...]:
    dims = array.metadata.dimension_names
    if dims is None or len(dims) != array.ndim or any(d is None for d in dims):
        raise StoreError(f"{path}: array {where} has no dimension names; it was not written by interpret_spectral")
    return tuple(str(d) for d in dims)


def inspect_zarr(path: str | os.PathLike[str] | RemotePath) -> FileFacts:
    """Check a zarr store before it is read; return its complete sample ids (the zarr ``inspect_file``).

    The format and version attributes are checked, every per-sample array must hold at
    least the named rows, the ``sample`` array must not declare far more rows than its
    chunks store (an edited ``zarr.json``), and the ids must match ``sample_crc32``.
    Rows of a batch that crashed before naming its samples (ids are written last) are
    not counted.

    Raises
    ------
    StoreError
        Not a zarr v3 store, not a store, a future version, or damaged metadata.
    StoreIntegrityError
        A chunk of ``sample`` or ``sample_crc32`` fails its checksum, or an id its CRC-32.

    Examples
    --------
    >>> facts = inspect_zarr("out/store.zarr")  # doctest: +SKIP
    >>> facts.ids[:2], facts.writing_finished  # doctest: +SKIP
    (['2007_000032', '2007_000033'], True)
    """
    path = location(path)
    root = open_zarr_group(path)
    try:
        return _inspect_group(root, path)
    except (StoreError, KeyboardInterrupt):
        raise
    except Exception as error:
        raise _damage(path, error, "its sample ids") from error


def _per_sample_arrays(root: Any, path: Path | RemotePath) -> list[tuple[str, Any]]:
    found = []
    groups = [("", root), *root.groups()]
    for group_name, group in groups:
        for name, array in group.arrays():
            where = f"{group_name}/{name}" if group_name else name
            if _dims(array, where, path)[:1] == ("sample",):
                found.append((where, array))
    return found


def _chunk_names(folder: Path | RemotePath) -> set[str]:
    """The first-axis chunk indices stored under ``folder/c`` (the default chunk key encoding ``c/<i>/...``)."""
    chunks = folder / "c"
    if isinstance(chunks, RemotePath):
        return {entry.name for entry in chunks.iterdir()} if chunks.is_dir() else set()
    return {entry.name for entry in os.scandir(chunks)} if chunks.is_dir() else set()


def _lost_row(folder: Path | RemotePath, rows_per_chunk: int, named: int) -> int | None:
    """The first named row whose chunk file is missing (chunk keys ``c/<i>/...``), or None."""
    stored = _chunk_names(folder)
    for index in range(-(-named // rows_per_chunk)):
        if str(index) not in stored:
            return index * rows_per_chunk
    return None


def _inspect_group(root: Any, path: Path | RemotePath) -> FileFacts:
    attrs = dict(root.attrs)
    if attrs.get("format") != FORMAT:
        raise StoreError(
            f"{path} is not an interpret_spectral store (root attribute format={attrs.get('format')!r}, expected "
            f"{FORMAT!r}); make stores with interpret_spectral.probe()"
        )
    parse_format_version(attrs.get("format_version"), str(path))
    if "sample" not in root.array_keys():
        raise StoreError(f"{path} has no 'sample' array at its root; it is damaged or not a store")
    sample = root["sample"]
    if _dims(sample, "sample", path) != ("sample",):
        raise StoreError(f"{path}: 'sample' is not the 1-D array of the sample dimension; the store was edited")
    declared = int(sample.shape[0])
    stored = int(sample.chunks[0]) * len(_chunk_names(path / "sample"))
    if declared > stored + MAX_UNNAMED_ROWS:
        raise StoreError(
            f"{path}: the sample dimension declares {declared} rows but its chunks store at most {stored}; the "
            "store's zarr.json was edited or it is damaged: refusing to read it"
        )
    try:
        raw = sample[:]
    except KeyboardInterrupt:
        raise
    except Exception as error:
        raise _damage(path, error, "'sample' (the sample ids)") from error
    ids = [str(v) for v in np.asarray(raw, dtype=object).tolist()]
    named = 0
    while named < len(ids) and ids[named]:
        named += 1
    ids = ids[:named]
    for where, array in _per_sample_arrays(root, path):
        if int(array.shape[0]) < named:
            raise StoreError(
                f"{path}: variable {where!r} has {array.shape[0]} rows but {named} samples are named; the store "
                "is damaged or its zarr.json was edited"
            )
        lost = _lost_row(path / where, int(array.chunks[0]), named)
        if lost is not None:
            raise StoreIntegrityError(
                f"{path} is damaged: variable {where!r} has no data stored for sample {lost} ({ids[lost]!r}) (a "
                "chunk file is missing, which zarr would read as fill values); restore the store or rerun the probe"
            )
    if "sample_crc32" in root.array_keys():
        try:
            crc = np.asarray(root["sample_crc32"][:named])
        except KeyboardInterrupt:
            raise
        except Exception as error:
            raise _damage(path, error, "'sample_crc32' (the sample ids' checksums)") from error
        bad = np.flatnonzero(crc != id_checksums(ids))
        if bad.size:
            raise StoreIntegrityError(
                f"{path} is damaged: the sample id of row {int(bad[0])} ({ids[bad[0]]!r}) does not match its "
                "CRC-32 in 'sample_crc32'; restore the store or rerun the probe"
            )
    requested = attrs.get("samples_requested")
    finished = attrs.get("writing_finished")
    return FileFacts(
        ids=ids,
        rows_declared=declared,
        samples_requested=int(requested) if isinstance(requested, int) and requested >= 0 else None,
        writing_finished=None if finished is None else bool(finished),
    )


class _ZarrArray(BackendArray):
    """One zarr array read lazily, cut to the named rows along ``sample``; strings come as Python str."""

    def __init__(self, array: Any, shape: tuple[int, ...]) -> None:
        self.array = array
        self.shape = shape
        self.strings = array.dtype.kind in "TUSO"
        self.dtype = np.dtype(object) if self.strings else np.dtype(array.dtype)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.OUTER, self._read)

    def _read(self, key: tuple[Any, ...]) -> np.ndarray:
        # Positions are taken against the cut shape, so that none reaches past the named rows.
        normal: list[Any] = []
        for axis, k in enumerate(key):
            size = self.shape[axis]
            if isinstance(k, slice):
                normal.append(slice(*k.indices(size)))
            elif isinstance(k, (int, np.integer)):
                normal.append(int(k) + size if k < 0 else int(k))
            else:
                positions = np.asarray(k, dtype=np.int64)
                normal.append(np.where(positions < 0, positions + size, positions))
        values = np.asarray(self.array.oindex[tuple(normal)])
        return values.astype(object) if self.strings else values


#: The order the HDF5 format lists variables in (zarr lists a group's arrays in no set order).
_ORDER = ("sample", "sample_crc32", "original_height", "original_width", "pixels", "token_y", "token_x",
          "token_kind", "q", "k", "v", "features")


def _dataset(group: Any, group_name: str, ids: list[str], path: Path | RemotePath) -> xr.Dataset:
    variables: dict[str, xr.Variable] = {}
    coordinates: set[str] = set()
    arrays = sorted(group.arrays(), key=lambda item: (_ORDER.index(item[0]) if item[0] in _ORDER else len(_ORDER),
                                                      item[0]))
    for name, array in arrays:
        where = f"{group_name}/{name}" if group_name else name
        dims = _dims(array, where, path)
        attrs = _read_attrs(array.attrs)
        coordinates.update(str(attrs.pop("coordinates", "")).split())
        if dims == (name,):
            coordinates.add(name)
        if name == "sample" and not group_name:
            data: Any = np.asarray(ids, dtype=str)
        elif array.dtype.kind in "TUSO" and dims[:1] != ("sample",):
            # Small string coordinates (token_kind, ...) are read now, as fixed-width str like the HDF5 format's.
            try:
                data = np.asarray(np.asarray(array[...], dtype=object).tolist(), dtype=str)
            except KeyboardInterrupt:
                raise
            except Exception as error:
                raise _damage(path, error, repr(where)) from error
        else:
            shape = (len(ids), *array.shape[1:]) if dims[:1] == ("sample",) else tuple(array.shape)
            data = indexing.LazilyIndexedArray(_ZarrArray(array, shape))
        variables[name] = xr.Variable(dims, data, attrs)
    coords = {name: variables.pop(name) for name in list(variables) if name in coordinates}
    return xr.Dataset(variables, coords=coords, attrs=_read_attrs(group.attrs))


def read_zarr_tree(path: str | os.PathLike[str] | RemotePath) -> tuple[xr.DataTree, FileFacts]:
    """The store's tree, lazily read and cut to its named samples, with what :func:`inspect_zarr` found.

    ``interpret_spectral.open_store("x.zarr")`` calls this, then checks the tree
    (:func:`~interpret_spectral.store.format.validate_store`), maps checksum errors to
    :class:`~interpret_spectral.store.format.StoreIntegrityError` and records whether the
    store is complete; use that.

    Examples
    --------
    >>> tree, facts = read_zarr_tree("out/store.zarr")  # doctest: +SKIP
    >>> tree["blocks.0.attn"]["q"].dims  # doctest: +SKIP
    ('sample', 'head', 'token', 'channel')
    """
    path = location(path)
    facts = inspect_zarr(path)
    root = open_zarr_group(path)
    try:
        nodes = {"/": _dataset(root, "", facts.ids, path)}
        groups = dict(root.groups())
        # Groups in forward order, as the HDF5 format lists them (zarr lists them in no set order).
        for name in sorted(groups, key=lambda n: (str(groups[n].attrs.get("order", "")).zfill(12), n)):
            nodes[f"/{name}"] = _dataset(groups[name], name, facts.ids, path)
        tree = xr.DataTree.from_dict(nodes)
    except (StoreError, KeyboardInterrupt):
        raise
    except Exception as error:  # small coordinates become indexes (read now): a damaged one, or bad metadata
        raise _damage(path, error, "its coordinates") from error
    return tree, facts


def zarr_layout(path: str | os.PathLike[str] | RemotePath) -> tuple[dict[str, Any], dict[str, tuple[dict[str, Any], dict[str, Any]]]]:
    """Root attributes, and per group its attributes and its arrays' ``(dtype, shape)``: no data read.

    What :func:`~interpret_spectral.store.shards.store_fingerprint` compares across shards.

    Examples
    --------
    >>> attrs, groups = zarr_layout("out/store.zarr")  # doctest: +SKIP
    >>> groups["blocks.0.attn"][1]["q"]  # doctest: +SKIP
    ('float32', (4, 3, 17, 64))
    """
    path = location(path)
    root = open_zarr_group(path)
    try:
        groups = {
            name: (_read_attrs(group.attrs), {key: (str(np.dtype(a.dtype)) if a.dtype.kind not in "TUSO" else "str",
                                                    tuple(a.shape)) for key, a in group.arrays()})
            for name, group in root.groups()
        }
    except (StoreError, KeyboardInterrupt):
        raise
    except Exception as error:
        raise _damage(path, error, "its metadata") from error
    return _read_attrs(root.attrs), groups

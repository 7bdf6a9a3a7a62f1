"""HDF5 files of stores: the filters every array gets, HDF5 errors told apart, the data present.

Three things live here, all about the file rather than the format:

- :func:`array_filters`: Fletcher-32 on every numeric array (so a flipped byte is
  an error, never a changed value) and compression (gzip or lzf, with shuffle);
- :func:`open_error`: an HDF5 error turned into what it means: locked by a
  writer, not HDF5, truncated, damaged;
- :func:`inspect_file`: before xarray reads anything, every per-sample array's
  declared length is checked against the chunks actually stored, and the sample ids
  against their CRC-32, so an edited dimension is refused before it is allocated.

Examples
--------
>>> sorted(array_filters("gzip"))
['compression', 'compression_opts', 'fletcher32', 'shuffle']
"""

from __future__ import annotations

import dataclasses
import errno
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from interpret_spectral.store.format import (
    FORMAT, StoreError, StoreIntegrityError, StoreLockedError, parse_format_version,
)

__all__ = ["COMPRESSIONS", "MAX_UNNAMED_ROWS", "array_filters", "open_error", "is_checksum_error",
           "id_checksums", "inspect_file", "FileFacts", "sample_span"]

#: Compression choices of a store's arrays (None: uncompressed, still checksummed).
COMPRESSIONS = ("gzip", "lzf", None)
#: Rows a store may declare beyond the data stored: a batch interrupted mid-write.
MAX_UNNAMED_ROWS = 65536
_LOCK_ERRNOS = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES}


def array_filters(compression: str | None = None, level: int = 4) -> dict[str, Any]:
    """h5py dataset options of a store array: Fletcher-32, and compression with shuffle.

    Parameters
    ----------
    compression : {"gzip", "lzf", None}
        The codec; None stores the array uncompressed (still checksummed).
    level : int
        gzip level, 0-9.

    Examples
    --------
    >>> array_filters(None)
    {'fletcher32': True}
    >>> array_filters("lzf")
    {'fletcher32': True, 'compression': 'lzf', 'shuffle': True}
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level <= 9:
        raise ValueError(f"compression_level must be a whole number 0-9 (used by gzip), got {level!r}")
    options: dict[str, Any] = {"fletcher32": True}
    if compression is None:
        return options
    options.update(compression=compression, shuffle=True)
    if compression == "gzip":
        options["compression_opts"] = int(level)
    return options


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_checksum_error(error: BaseException) -> bool:
    """Whether an h5py error means damaged bytes: a failed checksum or filter, or corrupt metadata.

    Examples
    --------
    >>> is_checksum_error(OSError("Can't synchronously read data (filter returned failure during read)"))
    True
    >>> is_checksum_error(KeyError("Unable to synchronously open object (incorrect metadata checksum)"))
    True
    >>> is_checksum_error(OSError("Unable to open file (no such file)"))
    False
    """
    text = str(error).lower()
    return isinstance(error, (OSError, KeyError, ValueError, RuntimeError)) and any(
        sign in text for sign in _DAMAGE_SIGNS)


#: What HDF5 says when it reads damaged bytes: a failed filter or checksum (data or metadata),
#: a codec running off its buffer, a corrupt heap or object header.
_DAMAGE_SIGNS = ("filter returned failure", "checksum", "ran off end of input buffer", "bad heap",
                 "bad object header", "wrong b-tree signature", "bad global heap")


def open_error(path: Path, error: BaseException) -> BaseException:
    """The error to raise for an HDF5 file that could not be opened, saying what it means.

    A ``KeyboardInterrupt`` anywhere in the chain is returned as it is (an
    interruption, never "corrupt"); a lock held by another process gives
    :class:`StoreLockedError`; other failures a :class:`StoreError` saying whether the
    file is not HDF5, truncated, or damaged.

    Examples
    --------
    >>> e = open_error(Path("s.h5"), OSError(11, "Unable to synchronously open file (unable to lock file)"))
    >>> type(e).__name__
    'StoreLockedError'
    """
    for link in _chain(error):
        if isinstance(link, KeyboardInterrupt):
            return link
    text = str(error)
    lowered = text.lower()
    code = getattr(error, "errno", None)
    if "unable to lock file" in lowered or (isinstance(error, BlockingIOError)) or (
        code in _LOCK_ERRNOS and "lock" in lowered
    ):
        return StoreLockedError(
            f"{path} is locked: another process has it open for writing (a probe still running?). The file "
            "is not damaged; wait for that process to finish, or open a copy"
        )
    if isinstance(error, PermissionError) or code == errno.EACCES:
        return PermissionError(f"{path} cannot be read: permission denied")
    if is_checksum_error(error):
        return StoreIntegrityError(f"{path} is damaged: a checksum failed while opening it ({text}); restore the file or rerun the probe")
    if "signature not found" in lowered:
        return StoreError(f"{path} is not an HDF5 file (no HDF5 signature); give a store written by interpret_spectral.probe()")
    if "truncated" in lowered or "eof" in lowered:
        return StoreError(
            f"{path} is truncated ({text}); rerun the probe (resume=True keeps the complete batches of an "
            "interrupted run only while the file itself is intact)"
        )
    return StoreError(
        f"{path} cannot be read as HDF5 ({type(error).__name__}: {text}); the file is damaged or not a store: "
        "rerun the probe"
    )


def id_checksums(ids: Sequence[str]) -> np.ndarray:
    """CRC-32 of every sample id's UTF-8 bytes, as stored in ``sample_crc32``.

    Examples
    --------
    >>> id_checksums(["a"]).tolist()
    [3904355907]
    """
    return np.asarray([zlib.crc32(str(i).encode("utf-8")) for i in ids], dtype=np.uint32)


def sample_span(key: Any, ids: Sequence[str]) -> str:
    """Words naming the samples a read key selects along its first axis ("samples 2-3 ('a'..'b')").

    Examples
    --------
    >>> sample_span(slice(1, 3), ["a", "b", "c"])
    "samples 1-2 ('b'..'c')"
    """
    first = key[0] if isinstance(key, tuple) and key else key
    n = len(ids)
    if isinstance(first, slice):
        rows = range(*first.indices(max(n, 1)))
    elif isinstance(first, (int, np.integer)):
        rows = range(int(first), int(first) + 1)
    else:
        try:
            values = np.asarray(first).ravel().astype(int)
        except (TypeError, ValueError):
            return "some samples"
        rows = range(int(values.min()), int(values.max()) + 1) if values.size else range(0)
    if not len(rows):
        return "no samples"
    lo, hi = rows[0], rows[-1]
    name = lambda r: repr(ids[r]) if 0 <= r < n else f"row {r}"  # noqa: E731
    return f"sample {lo} ({name(lo)})" if lo == hi else f"samples {lo}-{hi} ({name(lo)}..{name(hi)})"


@dataclasses.dataclass(frozen=True)
class FileFacts:
    """What :func:`inspect_file` found: ids of complete samples and the rows declared."""

    ids: list[str]
    rows_declared: int
    samples_requested: int | None
    writing_finished: bool | None


def _rows_stored(dataset: Any) -> int:
    """Rows of a per-sample dataset whose data is actually in the file (allocated chunks)."""
    shape = dataset.shape
    per_row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    if per_row == 0:
        return shape[0]
    if dataset.chunks is None:
        stored = dataset.id.get_storage_size() // max(dataset.dtype.itemsize, 1)
    else:
        stored = dataset.id.get_num_chunks() * int(np.prod(dataset.chunks, dtype=np.int64))
    return int(min(shape[0], stored // per_row))


def _attr(attrs: Any, key: str) -> Any:
    value = attrs.get(key)
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value


def inspect_file(path: str | os.PathLike[str]) -> FileFacts:
    """Check a store file with h5py before xarray reads it; return its complete sample ids.

    Raises
    ------
    StoreLockedError
        Another process holds the file open for writing.
    StoreError
        Not HDF5, truncated, not a store, a future version, or a per-sample array that
        declares more rows than it stores (an edited dimension), or ids that fail their CRC.
    KeyboardInterrupt
        Propagated as an interruption, never reported as damage.

    Examples
    --------
    >>> from interpret_spectral.synthetic import planted_store
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "s.h5")
    >>> planted_store(n_samples=2, path=path).close()
    >>> inspect_file(path).ids
    ['planted-0', 'planted-1']
    """
    import h5py

    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except KeyboardInterrupt:
        raise
    except Exception as error:
        raise open_error(path, error) from error
    with handle:
        try:
            return _inspect_open_file(handle, path)
        except (OSError, KeyError, ValueError, RuntimeError) as error:
            if isinstance(error, StoreError):
                raise
            # h5py raised while walking the file (corrupt metadata): say what it means, naming the file
            raise open_error(path, error) from error


def _inspect_open_file(handle: Any, path: Path) -> FileFacts:
    """The checks of :func:`inspect_file` on an open h5py file."""
    import h5py

    fmt = _attr(handle.attrs, "format")
    if fmt != FORMAT:
        raise StoreError(
            f"{path} is not an interpret_spectral store (root attribute format={fmt!r}, expected {FORMAT!r}); "
            "make stores with interpret_spectral.probe()"
        )
    parse_format_version(_attr(handle.attrs, "format_version"), str(path))
    if "sample" not in handle or not isinstance(handle["sample"], h5py.Dataset) or handle["sample"].ndim != 1:
        raise StoreError(f"{path} has no 'sample' variable at its root; it is damaged or not a store")
    declared = int(handle["sample"].shape[0])
    per_sample: list[tuple[str, Any]] = []

    def collect(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and name != "sample" and obj.ndim >= 1 and obj.maxshape[0] is None:
            per_sample.append((name, obj))

    try:
        handle.visititems(collect)
    except KeyboardInterrupt:
        raise
    except Exception as error:
        raise open_error(path, error) from error
    for name, dataset in per_sample:
        if dataset.shape[0] != declared:
            raise StoreError(
                f"{path}: variable {name!r} has {dataset.shape[0]} rows but the sample dimension {declared}; "
                "the file is damaged or was edited"
            )
    numeric = [(name, d) for name, d in per_sample if d.dtype.kind in "fiu"]
    stored = {name: _rows_stored(d) for name, d in numeric}
    fewest = min(stored.values(), default=0)
    if declared > fewest + MAX_UNNAMED_ROWS:
        raise StoreError(
            f"{path}: the sample dimension declares {declared} rows but data is stored for {fewest}; "
            "the file's dimensions were edited or it is damaged: refusing to read it"
        )
    try:
        raw = handle["sample"][:declared]
    except KeyboardInterrupt:
        raise
    except Exception as error:
        raise open_error(path, error) from error
    ids = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in raw]
    named = 0
    while named < len(ids) and ids[named]:
        named += 1
    ids = ids[:named]
    if "sample_crc32" in handle:
        try:
            crc = np.asarray(handle["sample_crc32"][:named])
        except (OSError, KeyError, ValueError) as error:
            if is_checksum_error(error):
                raise StoreIntegrityError(
                    f"{path} is damaged: checksum error reading 'sample_crc32' (the sample ids' checksums); "
                    "restore the file or rerun the probe"
                ) from error
            raise
        bad = np.flatnonzero(crc != id_checksums(ids))
        if bad.size:
            raise StoreIntegrityError(
                f"{path} is damaged: the sample id of row {int(bad[0])} ({ids[bad[0]]!r}) does not match its "
                "CRC-32 in 'sample_crc32'; restore the file or rerun the probe"
            )
    for name, rows in stored.items():
        if rows < named:
            raise StoreError(
                f"{path}: variable {name!r} stores data for {rows} rows but {named} samples are named; the "
                "file is damaged or its dimensions were edited"
            )
    requested = _attr(handle.attrs, "samples_requested")
    finished = _attr(handle.attrs, "writing_finished")
    return FileFacts(
        ids=ids,
        rows_declared=declared,
        samples_requested=int(requested) if isinstance(requested, (int, np.integer)) and requested >= 0 else None,
        writing_finished=None if finished is None else bool(finished),
    )

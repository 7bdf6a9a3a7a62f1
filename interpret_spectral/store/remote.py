"""Stores at fsspec URLs (``s3://``, ``gs://``, ``memory://``, ``file://``), opened read-only.

``open_store("s3://bucket/run/store.zarr")`` reads a zarr v3 store, and
``open_store("s3://bucket/run/store")`` a sharded store of zarr shards (its
``manifest.json`` read through fsspec), with the same checks as on a local disk.  The
filesystem comes from fsspec's registry: ``s3://`` needs ``s3fs``, ``gs://`` needs
``gcsfs`` (installed by the user; credentials from their usual configuration).  A
``file://`` URL is a local path and is read as one (HDF5 files included).

Only reading goes through a URL.  Writers stay local: their crash safety relies on
writing beside the final name and renaming in, which object stores do not offer;
write locally and copy the finished store (``fsspec``'s ``put``, ``aws s3 sync``).
HDF5 stores are read from local paths only.

:class:`RemotePath` holds the few :class:`pathlib.Path` methods the readers use, so
:mod:`~interpret_spectral.store.zarr_store` and :mod:`~interpret_spectral.store.shards`
read a URL by the same code as a folder; :func:`location` gives one or the other.

Examples
--------
>>> is_url("s3://bucket/store.zarr"), is_url("out/store.zarr")
(True, False)
>>> location("file:///tmp/store.zarr")
PosixPath('/tmp/store.zarr')
>>> location("memory://bucket/store.zarr")
RemotePath('memory://bucket/store.zarr')
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["URL_MARK", "RemotePath", "is_url", "location", "refuse_url", "HDF5_AT_URL"]

#: What marks a store's name as a URL.
URL_MARK = "://"
#: The one line that refuses HDF5 data at a URL.
HDF5_AT_URL = ("HDF5 shards are read from local paths; use zarr shards (--shard-format zarr) for object stores, or "
               "copy the store to a local disk")


def is_url(path: object) -> bool:
    """Whether ``path`` names a store by URL (a string holding ``://``, or a :class:`RemotePath`).

    Examples
    --------
    >>> is_url("gs://bucket/s"), is_url("file:///tmp/s.h5"), is_url(Path("s.h5"))
    (True, True, False)
    """
    return isinstance(path, RemotePath) or (isinstance(path, str) and URL_MARK in path)


def _local_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"{url} names the host {parts.netloc!r}; a file:// URL names a local path: file:///abs/path")
    return Path(unquote(parts.path))


def location(path: str | os.PathLike[str] | RemotePath) -> Path | RemotePath:
    """A store's location: a :class:`RemotePath` for a URL, a local :class:`~pathlib.Path` otherwise.

    ``file://`` URLs are local paths.

    Examples
    --------
    >>> location("store.zarr"), location("file://localhost/data/s.h5")
    (PosixPath('store.zarr'), PosixPath('/data/s.h5'))
    """
    if isinstance(path, RemotePath):
        return path
    if is_url(path):
        text = str(path)
        if text.lower().startswith("file://"):
            return _local_path(text)
        return RemotePath(text)
    return Path(path)


def refuse_url(path: object, what: str) -> None:
    """Raise one clear line when a writer is given a URL: writers write local paths only.

    Examples
    --------
    >>> refuse_url("out/store.zarr", "probe(out=...)")
    >>> refuse_url("s3://b/store.zarr", "probe(out=...)")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: probe(out=...) takes a local path, got the URL 's3://b/store.zarr' ...
    """
    if is_url(path):
        raise ValueError(
            f"{what} takes a local path, got the URL {str(path)!r}: stores are written locally (crash safety relies "
            "on renames, which object stores lack); write a local store and copy it up, then open_store(URL) reads it"
        )


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        from fsspec.core import url_to_fs
    except ImportError as error:
        raise ImportError(f"reading {url} needs fsspec: pip install 'interpret-spectral[scale]'") from error
    try:
        return url_to_fs(url)
    except ImportError as error:  # the protocol's own package (s3fs, gcsfs, ...) is missing
        raise ImportError(f"reading {url} needs its fsspec filesystem: {error}") from error
    except ValueError as error:
        raise ValueError(f"{url} is not a URL fsspec knows ({error}); give s3://, gs://, memory://, file://, ...") from error


class RemotePath:
    """A file or folder at an fsspec URL, with the :class:`pathlib.Path` methods the store readers use.

    Parameters
    ----------
    url : str
        ``protocol://...``; trailing slashes are dropped.

    Examples
    --------
    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe("/doc/store/manifest.json", b"{}")
    >>> folder = RemotePath("memory://doc/store")
    >>> folder.is_dir(), (folder / "manifest.json").read_text(), [p.name for p in folder.iterdir()]
    (True, '{}', ['manifest.json'])
    >>> (folder / "manifest.json").parent == folder, folder.name
    (True, 'store')
    """

    def __init__(self, url: str, _fs: Any = None, _path: str | None = None) -> None:
        self.url = str(url).rstrip("/")
        if _fs is None:
            _fs, _path = _filesystem(self.url)
        self.fs = _fs
        self.path = str(_path).rstrip("/") or "/"

    def __truediv__(self, name: str | os.PathLike[str]) -> RemotePath:
        name = os.fspath(name).strip("/")
        return RemotePath(f"{self.url}/{name}", self.fs, f"{self.path.rstrip('/')}/{name}")

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def name(self) -> str:
        """The last part of the URL."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def parent(self) -> RemotePath:
        """The folder holding this one."""
        return RemotePath(self.url.rsplit("/", 1)[0], self.fs, self.path.rsplit("/", 1)[0] or "/")

    def expanduser(self) -> RemotePath:
        """Itself (a URL has no home folder)."""
        return self

    def exists(self) -> bool:
        """Whether an object or a folder (a prefix) is at the URL."""
        return bool(self.fs.exists(self.path))

    def is_file(self) -> bool:
        """Whether an object is at the URL."""
        return bool(self.fs.isfile(self.path))

    def is_dir(self) -> bool:
        """Whether the URL is a folder (a prefix of objects on an object store)."""
        return bool(self.fs.isdir(self.path))

    def iterdir(self) -> list[RemotePath]:
        """What the folder holds (one listing), sorted by name."""
        names = {str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(self.path, detail=False)}
        return [self / name for name in sorted(names) if name]

    def glob(self, pattern: str) -> list[RemotePath]:
        """What the folder holds whose name matches ``pattern`` (one level, as :meth:`pathlib.Path.glob`)."""
        return [child for child in self.iterdir() if fnmatch.fnmatchcase(child.name, pattern)]

    def read_bytes(self) -> bytes:
        """The object's bytes."""
        return bytes(self.fs.cat_file(self.path))

    def read_text(self) -> str:
        """The object's bytes decoded as UTF-8."""
        return self.read_bytes().decode("utf-8")

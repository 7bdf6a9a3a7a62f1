"""Writing zarr v3 stores: the HDF5 writer's contract, through zarr-python 3.

:class:`ZarrStoreWriter` is a :class:`~interpret_spectral.store.writer.StoreWriter`
(the same checks of every batch, the same ``append``/``close``/``abort``, ``resume``
and ``overwrite``) whose store is a zarr v3 folder (:mod:`interpret_spectral.store.zarr_store`
says what it holds).  Every array grows along ``sample`` first, then its rows are
written, and the sample ids last, so a crash mid-batch leaves a prefix of named rows
that ``open_store`` reads and ``resume=True`` continues.  A new store is made as an
empty store beside its name (``<name>.partial-<pid>``) and renamed in; with
``overwrite=True`` the whole new store is written there and swapped in by
:meth:`~ZarrStoreWriter.close` only, so a failed run leaves the old one.
``probe(..., out="x.zarr")`` picks this writer.

Examples
--------
>>> import tempfile, numpy as np
>>> from interpret_spectral.store.sites import AttentionSite
>>> site = AttentionSite("a", "a", 0, 1, 2, 1.0, (1, 2), ("patch", "patch"))
>>> writer = create_zarr_store([site], path=tempfile.mkdtemp() + "/s.zarr", samples_requested=1)
>>> writer.append(["s0"], {"a": {v: np.ones((1, 1, 2, 2)) for v in "qkv"}})
>>> store = writer.close()
>>> store["a"]["q"].values.sum(), store.attrs["complete"]
(np.float32(4.0), 1)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from interpret_spectral.store.atomic import (
    fsync_path,
    fsync_tree,
    partial_name,
    remove_dead_partials,
    remove_path,
    replace_dir,
)
from interpret_spectral.store.format import DESCRIPTIONS, plain_attrs
from interpret_spectral.store.reader import open_store
from interpret_spectral.store.sites import AttentionSite
from interpret_spectral.store.writer import StoreWriter
from interpret_spectral.store.zarr_store import (
    create_zarr_group, inspect_zarr, json_attrs, open_zarr_group, zarr_codecs,
)

__all__ = ["ZarrStoreWriter", "create_zarr_store"]

_ROWS_PER_CHUNK = 1024  # chunk length of the small per-sample arrays (ids, their CRCs, image sizes)


class _Handle:
    """The open store as the writer's batch code uses it (``f[name]``, ``name in f``, ``flush()``)."""

    def __init__(self, group: Any) -> None:
        self.group = group

    def __getitem__(self, name: str) -> Any:
        return self.group[name]

    def __contains__(self, name: str) -> bool:
        return name in self.group

    def flush(self) -> None:
        """Nothing to do: zarr writes every chunk (whole, by atomic rename) when it is assigned."""

    def close(self) -> None:
        """Nothing to do: a zarr group holds no open file."""


def _described(name: str, **extra: Any) -> dict[str, Any]:
    long_name, description = DESCRIPTIONS[name]
    return {"long_name": long_name, "description": description, **extra}


class ZarrStoreWriter(StoreWriter):
    """Append-only writer of a zarr v3 store (a folder ``*.zarr``); see :class:`StoreWriter`.

    Takes :class:`StoreWriter`'s options; ``path`` is required, and ``compression`` is
    None or ``"gzip"`` (every chunk is ``crc32c``-checksummed either way).
    """

    def __init__(self, sites: Sequence[AttentionSite], *, path: str | os.PathLike[str], **options: Any) -> None:
        if path is None:
            raise ValueError("a zarr store is written to disk: give path='name.zarr' (create_store keeps stores in memory)")
        self._codecs = zarr_codecs(options.get("compression"), options.get("compression_level", 4))
        super().__init__(sites, path=path, **options)

    # -- on-disk layout (StoreWriter's hooks) ---------------------------------------------
    def _open_file(self, resume: bool, overwrite: bool) -> None:
        path = self.path
        assert path is not None
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{path} is a file; a zarr store is a folder: choose another name, or remove it")
        if path.exists() and resume:
            existing = open_store(path)
            try:
                self._check_compatible(existing)
            finally:
                existing.close()
            self._written = inspect_zarr(path).ids
            self._file = _Handle(open_zarr_group(path, mode="r+"))
            self._target = path
            self._resize(len(self._written))  # drop rows of a batch that crashed mid-write
            self._set_attrs(writing_finished=0, samples_requested=self.samples_requested)
            return
        if path.exists() and not overwrite:
            raise FileExistsError(
                f"{path} exists; pass resume=True to continue it, overwrite=True to replace it "
                "(the old store stays until the new one is complete), or choose another path"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_name(path)
        remove_path(tmp)
        remove_dead_partials(path)  # what writers killed earlier left beside it
        try:
            self._create_skeleton(tmp)
            fsync_tree(tmp)
            if overwrite and path.exists():
                self._target = tmp  # batches go there; close() swaps it in, abort() removes it
            else:
                os.rename(tmp, path)  # complete as an empty store only now
                fsync_path(path.parent)
                self._target = path
        except BaseException:
            remove_path(tmp)
            raise
        self._file = _Handle(open_zarr_group(self._target, mode="r+"))

    def _set_attrs(self, **attrs: Any) -> None:
        assert self._file is not None
        self._file.group.update_attributes(json_attrs(plain_attrs(attrs)))

    def _create_skeleton(self, target: Path) -> None:
        group = create_zarr_group(target, json_attrs(plain_attrs({**self.root_attrs, "writing_finished": False})))

        def array(where: Any, name: str, dims: tuple[str, ...], shape: tuple[int, ...], dtype: Any,
                  chunks: tuple[int, ...], attrs: dict[str, Any], data: Any = None) -> None:
            fill: Any = "" if dtype is str else (np.nan if np.dtype(dtype).kind == "f" else 0)
            created = where.create_array(
                name, shape=shape, chunks=tuple(max(c, 1) for c in chunks), dtype=dtype, dimension_names=dims,
                compressors=self._codecs, fill_value=fill, attributes=attrs,
            )
            if data is not None and len(data):
                created[...] = data

        rows = (_ROWS_PER_CHUNK,)
        array(group, "sample", ("sample",), (0,), str, rows, _described("sample"))
        array(group, "sample_crc32", ("sample",), (0,), "u4", rows, _described("sample_crc32"))
        for name in ("original_height", "original_width"):
            array(group, name, ("sample",), (0,), "i4", rows, _described(name, units="pixel"))
        for name, values in self.extra_dims.items():
            strings = values.dtype.kind in "US"
            data = np.asarray([str(v) for v in values], dtype=object) if strings else values
            array(group, name, (name,), (len(values),), str if strings else values.dtype, (len(values),),
                  _described(name) if name in DESCRIPTIONS else {}, data)
        if self.pixels_shape is not None:
            shape = (*self.pixels_shape, 3)
            array(group, "pixels", ("sample", "y", "x", "rgb"), (0, *shape), "u1", (1, *shape), _described("pixels"))
        for site in self.sites:
            node = group.create_group(site.name, attributes=json_attrs(plain_attrs(site.attrs())))
            token_y, token_x = site.token_yx()
            n = site.num_tokens
            for name, values in (("token_y", token_y), ("token_x", token_x)):
                array(node, name, ("token",), (n,), "i4", (n,), _described(name), np.asarray(values, np.int32))
            array(node, "token_kind", ("token",), (n,), str, (n,), _described("token_kind"),
                  np.asarray(site.token_kinds, dtype=object))
            for var in self.capture:
                shape = self._var_shape(site, var)
                # CF convention: the coordinates attribute names the variable's coordinates.
                array(node, var, self._var_dims(var), (0, *shape), self.dtype, (1, *shape),
                      _described(var, coordinates="token_y token_x token_kind"))

    def _resize(self, length: int) -> None:
        f = self._file
        assert f is not None
        sample = f["sample"]
        if length < sample.shape[0]:
            # Rows dropped now must not come back named when the store grows again (their chunk stays).
            sample[length:] = ""
        arrays = [sample, f["sample_crc32"], f["original_height"], f["original_width"]]
        arrays += [f["pixels"]] if "pixels" in f else []
        arrays += [f[site.name][var] for site in self.sites for var in self.capture]
        for array in arrays:
            array.resize((length, *array.shape[1:]))

    # -- public -------------------------------------------------------------------------
    def close(self) -> Any:
        """Finish writing and return the store, opened lazily.

        The store is marked finished and fsynced; a store written with ``overwrite=True``
        replaces the old one only now.
        """
        if self._file is not None:
            self._set_attrs(writing_finished=1)
            self._file = None
            assert self._target is not None and self.path is not None
            fsync_tree(self._target)
            if self._target != self.path:
                replace_dir(self._target, self.path)
                self._target = self.path
        return open_store(self.path)

    def abort(self) -> None:
        """Stop on an error without returning the store.

        Written batches of a store made in place stay (``resume=True`` continues it);
        a replacing store (``overwrite=True``) is removed and the old one stays.
        """
        self._file = None
        if self.path is not None and self._target is not None and self._target != self.path:
            remove_path(self._target)
            self._target = None


def create_zarr_store(sites: Sequence[AttentionSite], **options: Any) -> ZarrStoreWriter:
    """Start a zarr v3 store for ``sites`` at ``path`` (a folder ``*.zarr``): :func:`create_store`'s options.

    Parameters
    ----------
    sites : sequence of AttentionSite
        The attention sites; groups are written in their forward ``order``.
    **options
        :func:`~interpret_spectral.store.writer.create_store`'s keyword options; ``path``
        is required, ``compression`` is None or ``"gzip"``.

    Returns
    -------
    ZarrStoreWriter

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from interpret_spectral.store.sites import AttentionSite
    >>> site = AttentionSite("b", "b", 0, 2, 4, 0.5, (2, 2), ("cls",) + ("patch",) * 4)
    >>> writer = create_zarr_store([site], path=tempfile.mkdtemp() + "/t.zarr", compression="gzip")
    >>> writer.append(["img0", "img1"], {"b": {v: np.zeros((2, 2, 5, 4)) for v in "qkv"}})
    >>> writer.close()["b"]["token_kind"].values[:2].tolist()
    ['cls', 'patch']
    """
    return ZarrStoreWriter(sites, **options)

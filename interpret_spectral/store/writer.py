"""Writing stores: create, append batch by batch, resume, replace on success.

Writing goes through :class:`StoreWriter`, which appends batch by batch with h5py
and flushes after each batch, so that a crash loses at most the batch in flight.
The file stays readable by ``xarray.open_datatree(path, engine="h5netcdf")``.

Every numeric array is written with HDF5's Fletcher-32 checksum and, on request, gzip
or lzf compression with shuffle (off by default: on attention q/k/v, float noise to a
codec, gzip saves about 14 % of the bytes for about three forward passes of write time
per image; ``dtype="float16"`` halves them for free); every variable gets CF ``long_name`` and
``description`` attributes.  A new store is made beside its final name and renamed
in; with ``overwrite=True`` the whole new store is written beside the old one
(``<path>.partial-<pid>``) and swapped in only by :meth:`StoreWriter.close`, so a
failed run leaves the old store as it was.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xarray as xr

from interpret_spectral.store.atomic import fsync_path, partial_name, remove_dead_partials, remove_path
from interpret_spectral.store.files import array_filters, id_checksums, inspect_file
from interpret_spectral.store.format import (
    DESCRIPTIONS, FORMAT, FORMAT_VERSION, StoreError, _package_version, plain_attrs,
)
from interpret_spectral.store.reader import open_store, site_names
from interpret_spectral.store.sites import AttentionSite

__all__ = ["StoreWriter", "create_store"]

_STR = h5py.string_dtype()


class StoreWriter:
    """Append-only writer of a store, in memory or on disk.

    Use :func:`create_store` to make one.  :meth:`append` writes one batch;
    :meth:`close` returns the store (an in-memory :class:`xarray.DataTree`, or the
    lazily opened file); :meth:`abort` stops on an error.

    On disk the file is written with h5netcdf (netCDF4 layout, the ``sample``
    dimension unlimited) and flushed after every batch.
    """

    def __init__(
        self,
        sites: Sequence[AttentionSite],
        *,
        path: str | os.PathLike[str] | None = None,
        capture: Sequence[str] = ("q", "k", "v"),
        extra_dims: Mapping[str, Sequence[Any]] | None = None,
        feature_dims: Mapping[str, int] | None = None,
        attrs: Mapping[str, Any] | None = None,
        dtype: str = "float32",
        pixels_shape: tuple[int, int] | None = None,
        resume: bool = False,
        overwrite: bool = False,
        samples_requested: int | None = None,
        preprocessing: str | None = None,
        compression: str | None = None,
        compression_level: int = 4,
    ) -> None:
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        if isinstance(sites, AttentionSite) or not isinstance(sites, Sequence) or not all(
            isinstance(s, AttentionSite) for s in sites
        ):
            raise TypeError(f"sites must be a sequence of AttentionSite, got {type(sites).__name__}")
        if not sites:
            raise ValueError("a store needs at least one attention site")
        names = [site.name for site in sites]
        if len(set(names)) != len(names):
            raise ValueError(f"site names must be unique, got {names}")
        if isinstance(capture, str):
            raise TypeError(f"capture must be a sequence of names such as ('q', 'k', 'v'), got the string {capture!r}")
        unknown = set(capture) - {"q", "k", "v", "features"}
        if unknown:
            raise ValueError(f"capture must name q, k, v or features, got {sorted(unknown)}")
        if resume and overwrite:
            raise ValueError("resume=True and overwrite=True exclude each other: continue the store or replace it")
        if samples_requested is not None and (
            isinstance(samples_requested, bool) or not isinstance(samples_requested, (int, np.integer)) or samples_requested < 0
        ):
            raise ValueError(f"samples_requested must be a non-negative whole number or None, got {samples_requested!r}")
        if preprocessing is not None and not isinstance(preprocessing, str):
            raise TypeError(f"preprocessing must be a string describing the preprocessing, got {type(preprocessing).__name__}")
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path or None, got {type(path).__name__}")
        self.filters = array_filters(compression, compression_level)
        self.sites = sorted(sites, key=lambda s: s.order)
        self.capture = tuple(capture)
        self.extra_dims = {k: np.asarray(v) for k, v in (extra_dims or {}).items()}
        self.feature_dims = dict(feature_dims or {})
        if "features" in self.capture:
            lacking = [s.name for s in self.sites if s.name not in self.feature_dims]
            if lacking:
                raise ValueError(f"capturing features needs feature_dims for every site; missing {lacking[:3]}")
        self.dtype = np.dtype(dtype)
        self.pixels_shape = None if pixels_shape is None else tuple(int(v) for v in pixels_shape)
        self.path = Path(path).expanduser() if path is not None else None
        self.samples_requested = None if samples_requested is None else int(samples_requested)
        self.root_attrs = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": _package_version(),
            "preprocessing": preprocessing,
            "samples_requested": self.samples_requested,
            **(attrs or {}),
        }
        self._memory: list[dict[str, Any]] = []
        self._file: h5py.File | None = None
        self._written: list[str] = []
        self._target: Path | None = None  # the file being written (a partial one when replacing)
        if self.path is not None:
            self._open_file(resume, overwrite)

    # -- on-disk layout -----------------------------------------------------------------
    def _var_dims(self, var: str) -> tuple[str, ...]:
        extra = tuple(self.extra_dims)
        if var == "features":
            return ("sample", *extra, "token", "feature")
        return ("sample", *extra, "head", "token", "channel")

    def _var_shape(self, site: AttentionSite, var: str) -> tuple[int, ...]:
        extra = tuple(len(v) for v in self.extra_dims.values())
        if var == "features":
            return (*extra, site.num_tokens, self.feature_dims[site.name])
        return (*extra, site.num_heads, site.num_tokens, site.head_dim)

    def _open_file(self, resume: bool, overwrite: bool) -> None:
        assert self.path is not None
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path} is a folder; give the store a file name such as {self.path / 'store.h5'}")
        if self.path.exists() and resume:
            existing = open_store(self.path)
            try:
                self._check_compatible(existing)
            finally:
                existing.close()
            self._written = inspect_file(self.path).ids
            self._file = h5py.File(self.path, "r+")
            self._target = self.path
            self._resize(len(self._written))  # drop rows of a batch that crashed mid-write
            self._file.attrs["writing_finished"] = 0
            if self.samples_requested is not None:
                self._file.attrs["samples_requested"] = self.samples_requested
            self._file.flush()
            return
        if self.path.exists() and not overwrite:
            raise FileExistsError(
                f"{self.path} exists; pass resume=True to continue it, overwrite=True to replace it "
                "(the old store stays until the new one is complete), or choose another path"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_name(self.path)
        remove_path(tmp)
        remove_dead_partials(self.path)  # what writers killed earlier left beside it
        try:
            self._create_skeleton(tmp)
            fsync_path(tmp)
            if overwrite and self.path.exists():
                # Batches go to the partial file; close() swaps it in, abort() removes it.
                self._target = tmp
            else:
                # A new store is complete as an empty store only now: a crash above leaves no half-made store.
                os.replace(tmp, self.path)
                fsync_path(self.path.parent)
                self._target = self.path
        except BaseException:
            remove_path(tmp)
            raise
        # Appends go through h5py: resize along ``sample``, write, flush.  (h5netcdf only
        # records the grown unlimited dimension when the file is closed.)
        self._file = h5py.File(self._target, "r+")

    def _describe(self, variable: Any, name: str) -> None:
        long_name, description = DESCRIPTIONS[name]
        variable.attrs["long_name"] = long_name
        variable.attrs["description"] = description

    def _create_skeleton(self, target: Path) -> None:
        import h5netcdf

        with h5netcdf.File(target, "w") as f:
            f.attrs.update(plain_attrs({**self.root_attrs, "writing_finished": False}))
            f.dimensions["sample"] = None
            self._describe(f.create_variable("sample", ("sample",), dtype=_STR, chunks=(1024,)), "sample")
            per_sample = {"chunks": (1024,), **self.filters}
            self._describe(f.create_variable("sample_crc32", ("sample",), dtype="u4", **per_sample), "sample_crc32")
            for name in ("original_height", "original_width"):
                variable = f.create_variable(name, ("sample",), dtype="i4", **per_sample)
                self._describe(variable, name)
                variable.attrs["units"] = "pixel"
            for name, values in self.extra_dims.items():
                f.dimensions[name] = len(values)
                if values.dtype.kind in "US":
                    coord = f.create_variable(name, (name,), dtype=_STR)
                    coord[:] = np.asarray([str(value) for value in values], dtype=object)
                else:
                    coord = f.create_variable(name, (name,), dtype=values.dtype, data=values, **self.filters)
                if name in DESCRIPTIONS:
                    self._describe(coord, name)
            if self.pixels_shape is not None:
                f.dimensions.update({"y": self.pixels_shape[0], "x": self.pixels_shape[1], "rgb": 3})
                pixels = f.create_variable(
                    "pixels", ("sample", "y", "x", "rgb"), dtype="u1", chunks=(1, *self.pixels_shape, 3), **self.filters
                )
                self._describe(pixels, "pixels")
            for site in self.sites:
                group = f.create_group(site.name)
                group.attrs.update(plain_attrs(site.attrs()))
                group.dimensions.update({"token": site.num_tokens, "head": site.num_heads, "channel": site.head_dim})
                token_y, token_x = site.token_yx()
                for name, values in (("token_y", token_y), ("token_x", token_x)):
                    self._describe(group.create_variable(name, ("token",), dtype="i4", data=values, **self.filters), name)
                kind = group.create_variable("token_kind", ("token",), dtype=_STR)
                kind[:] = np.asarray(site.token_kinds, dtype=object)
                self._describe(kind, "token_kind")
                for var in self.capture:
                    if var == "features":
                        group.dimensions["feature"] = self.feature_dims[site.name]
                    shape = self._var_shape(site, var)
                    # h5netcdf's default fill values know no float16: give one.
                    fill = {"fillvalue": np.float16(np.nan)} if self.dtype == np.float16 else {}
                    variable = group.create_variable(
                        var, self._var_dims(var), dtype=self.dtype, chunks=(1, *shape), **fill, **self.filters
                    )
                    self._describe(variable, var)
                    # CF convention: xarray reads these as the variable's coordinates.
                    variable.attrs["coordinates"] = "token_y token_x token_kind"

    def _check_compatible(self, existing: xr.DataTree) -> None:
        have = site_names(existing)
        want = [s.name for s in self.sites]
        if have != want:
            raise StoreError(
                f"cannot resume {self.path}: it holds sites {have}, this probe records {want}; "
                "use the same model, adapter and layers, or a new path"
            )
        for site in self.sites:
            node = existing[site.name]
            missing = [v for v in self.capture if v not in node.data_vars]
            if missing or int(node.attrs["num_heads"]) != site.num_heads or (
                int(node.attrs["grid_h"]), int(node.attrs["grid_w"])
            ) != tuple(site.grid):
                raise StoreError(
                    f"cannot resume {self.path}: site {site.name!r} differs from this probe "
                    f"(variables missing: {missing}, or other heads / grid); use a new path"
                )

    # -- public -------------------------------------------------------------------------
    @property
    def written(self) -> list[str]:
        """Sample ids already in the store (including those of a resumed file)."""
        if self.path is None:
            return [sid for batch in self._memory for sid in batch["sample"]]
        return list(self._written)

    def append(
        self,
        samples: Sequence[str],
        arrays: Mapping[str, Mapping[str, np.ndarray]],
        pixels: np.ndarray | None = None,
        original_sizes: Sequence[tuple[int, int] | None] | None = None,
    ) -> None:
        """Append one batch.

        Parameters
        ----------
        samples : sequence of str
            Ids of the batch's samples; ids must be unique across the store.
        arrays : mapping
            ``arrays[site_name][var]`` with the variable's shape, batch first.
        pixels : numpy.ndarray, optional
            ``(batch, y, x, 3)`` uint8, required when the store was made with pixels.
        original_sizes : sequence of (int, int) or None, optional
            ``(height, width)`` of every input image before preprocessing (None, or a
            None entry, where unknown: stored as -1).

        Examples
        --------
        >>> import numpy as np
        >>> from interpret_spectral.store.sites import AttentionSite
        >>> site = AttentionSite("a", "a", 0, 1, 2, 1.0, (1, 2), ("patch", "patch"))
        >>> w = create_store([site])
        >>> w.append(["s0"], {"a": {v: np.zeros((1, 1, 2, 2)) for v in "qkv"}}, original_sizes=[(480, 640)])
        >>> store = w.close()
        >>> store["a"]["q"].dims, store["original_width"].values.tolist()
        (('sample', 'head', 'token', 'channel'), [640])
        """
        if isinstance(samples, str) or not isinstance(samples, Sequence):
            raise TypeError(f"samples must be a sequence of ids, got {type(samples).__name__}")
        samples = [str(s) for s in samples]
        empty = [s for s in samples if not s]
        if empty:
            raise ValueError("sample ids must be non-empty strings")
        seen = set(self.written)
        clash = [s for s in samples if s in seen] + [s for i, s in enumerate(samples) if s in samples[:i]]
        if clash:
            raise ValueError(f"sample ids must be unique; already present: {sorted(set(clash))[:5]}")
        batch = len(samples)
        checked: dict[str, dict[str, np.ndarray]] = {}
        for site in self.sites:
            if site.name not in arrays:
                raise ValueError(f"batch lacks site {site.name!r}")
            checked[site.name] = {}
            for var in self.capture:
                if var not in arrays[site.name]:
                    raise ValueError(f"batch lacks {var!r} of site {site.name!r}")
                value = np.asarray(arrays[site.name][var])
                expected = (batch, *self._var_shape(site, var))
                if value.shape != expected:
                    raise ValueError(
                        f"site {site.name!r} {var}: shape {value.shape} does not match {expected}"
                    )
                checked[site.name][var] = value.astype(self.dtype, copy=False)
        if (pixels is None) != (self.pixels_shape is None):
            raise ValueError("pixels must be given exactly when the store was created with pixels_shape")
        if pixels is not None:
            pixels = np.asarray(pixels)
            if pixels.shape != (batch, *self.pixels_shape, 3) or pixels.dtype != np.uint8:
                raise ValueError(f"pixels must be uint8 {(batch, *self.pixels_shape, 3)}, got {pixels.dtype} {pixels.shape}")
        sizes = self._original_sizes(original_sizes, batch)
        if self.path is None:
            self._memory.append({"sample": samples, "arrays": checked, "pixels": pixels, "sizes": sizes})
            return
        f = self._file
        if f is None:
            raise ValueError(f"the writer of {self.path} is closed; open a new one with resume=True")
        start = len(self._written)
        stop = start + batch

        # Every array grows first (new ids empty), then data, then the ids: a crash mid-batch
        # leaves rows without an id, which open_store() leaves out and resume overwrites.
        self._resize(stop)
        for site in self.sites:
            group = f[site.name]
            for var, value in checked[site.name].items():
                group[var][start:stop] = value
        if pixels is not None:
            f["pixels"][start:stop] = pixels
        f["original_height"][start:stop] = sizes[:, 0]
        f["original_width"][start:stop] = sizes[:, 1]
        f["sample_crc32"][start:stop] = id_checksums(samples)
        f["sample"][start:stop] = np.asarray(samples, dtype=object)
        f.flush()
        self._written.extend(samples)

    @staticmethod
    def _original_sizes(original_sizes: Sequence[tuple[int, int] | None] | None, batch: int) -> np.ndarray:
        sizes = np.full((batch, 2), -1, dtype=np.int32)
        if original_sizes is None:
            return sizes
        if len(original_sizes) != batch:
            raise ValueError(f"original_sizes has {len(original_sizes)} entries for a batch of {batch} samples")
        for i, size in enumerate(original_sizes):
            if size is None:
                continue
            if len(size) != 2 or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in size
            ):
                raise ValueError(f"original_sizes[{i}] must be (height, width) in whole pixels >= 1, got {size!r}")
            sizes[i] = size
        return sizes

    def _resize(self, length: int) -> None:
        f = self._file
        assert f is not None
        datasets = [f["sample"], f["sample_crc32"], f["original_height"], f["original_width"]]
        datasets += [f["pixels"]] if "pixels" in f else []
        datasets += [f[site.name][var] for site in self.sites for var in self.capture]
        for dataset in datasets:
            dataset.resize(length, axis=0)

    def close(self) -> xr.DataTree:
        """Finish writing and return the store (opened lazily when on disk).

        On disk the file is marked finished and fsynced; a store written with
        ``overwrite=True`` replaces the old one only now.
        """
        if self.path is None:
            return self._memory_tree()
        if self._file is not None:
            self._file.attrs["writing_finished"] = 1
            self._file.flush()
            self._file.close()
            self._file = None
            assert self._target is not None
            fsync_path(self._target)
            if self._target != self.path:
                os.replace(self._target, self.path)
                fsync_path(self.path.parent)
                self._target = self.path
        return open_store(self.path)

    def abort(self) -> None:
        """Stop on an error: close the file without returning it.

        Written batches of a store made in place stay (``resume=True`` continues it);
        a replacing store (``overwrite=True``) is removed and the old one stays.
        """
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path is not None and self._target is not None and self._target != self.path:
            remove_path(self._target)
            self._target = None

    def _memory_tree(self) -> xr.DataTree:
        samples = [sid for batch in self._memory for sid in batch["sample"]]
        sizes = (
            np.concatenate([b["sizes"] for b in self._memory]) if self._memory else np.zeros((0, 2), np.int32)
        )
        root_vars: dict[str, Any] = {
            "sample_crc32": (("sample",), id_checksums(samples)),
            "original_height": (("sample",), sizes[:, 0]),
            "original_width": (("sample",), sizes[:, 1]),
        }
        if self.pixels_shape is not None:
            pixels = (
                np.concatenate([b["pixels"] for b in self._memory])
                if self._memory
                else np.zeros((0, *self.pixels_shape, 3), np.uint8)
            )
            root_vars["pixels"] = (("sample", "y", "x", "rgb"), pixels)
        root = xr.Dataset(
            root_vars,
            coords={"sample": np.asarray(samples, dtype=str), **{k: v for k, v in self.extra_dims.items()}},
            attrs=plain_attrs({**self.root_attrs, "writing_finished": True}),
        )
        for name in root.variables:
            if name in DESCRIPTIONS:
                root.variables[name].attrs.update(zip(("long_name", "description"), DESCRIPTIONS[name]))
        children = {}
        for site in self.sites:
            token_y, token_x = site.token_yx()
            data_vars = {}
            for var in self.capture:
                shape = self._var_shape(site, var)
                value = (
                    np.concatenate([b["arrays"][site.name][var] for b in self._memory])
                    if self._memory
                    else np.zeros((0, *shape), self.dtype)
                )
                data_vars[var] = (self._var_dims(var), value)
            ds = xr.Dataset(
                data_vars,
                coords={
                    "token_y": ("token", token_y),
                    "token_x": ("token", token_x),
                    "token_kind": ("token", np.asarray(site.token_kinds, dtype=str)),
                },
                attrs=plain_attrs(site.attrs()),
            )
            for name in ds.variables:
                ds.variables[name].attrs.update(zip(("long_name", "description"), DESCRIPTIONS[name]))
            children[site.name] = ds
        tree = xr.DataTree(root)
        for name, ds in children.items():
            tree[name] = xr.DataTree(ds)
        tree.attrs["samples_written"] = len(samples)
        tree.attrs["complete"] = int(self.samples_requested is None or len(samples) >= self.samples_requested)
        return tree


def create_store(sites: Sequence[AttentionSite], **options: Any) -> StoreWriter:
    """Start a store for ``sites``: in memory when ``path`` is None, else an HDF5 file.

    The options are keyword-only and go to :class:`StoreWriter` unchanged (its
    signature holds the defaults); an unknown one is a ``TypeError``.

    Parameters
    ----------
    sites : sequence of AttentionSite
        The attention sites; groups are written in their forward ``order``.
    path : path-like, optional
        File to write; it must not exist unless ``resume=True`` or ``overwrite=True``.
    capture : sequence of str
        Variables per site, from ``"q"``, ``"k"``, ``"v"``, ``"features"``.
    extra_dims : mapping, optional
        Extra dimensions after ``sample`` with their coordinates, e.g.
        ``{"timestep": [999, 500]}``.
    feature_dims : mapping, optional
        Width of ``features`` per site name (required when capturing features).
    attrs : mapping, optional
        Root attributes (model, adapter, input size, user metadata); stored as plain
        netCDF attributes (nested mappings as dotted names).
    dtype : {"float32", "float16"}
        Storage dtype of q, k, v and features.
    pixels_shape : tuple of int, optional
        ``(y, x)`` of the ``pixels`` variable, when input images are stored.
    resume : bool
        Continue an existing file written with the same sites.
    overwrite : bool
        Replace an existing file: the new store is written beside it and swapped in
        by :meth:`StoreWriter.close`; until then (and after a failure) the old one stays.
    samples_requested : int, optional
        How many samples the run will write; a store with fewer is incomplete
        (:func:`~interpret_spectral.store.reader.require_complete`).
    preprocessing : str, optional
        How inputs were turned into model inputs (resize, crop, normalisation), stored
        as the root attribute ``preprocessing``.
    compression : {None, "gzip", "lzf"}
        Codec of the numeric arrays (with shuffle); None (the default) stores them as they
        are.  Every array is Fletcher-32 checksummed either way.
    compression_level : int
        gzip level, 0-9.

    Returns
    -------
    StoreWriter

    Examples
    --------
    >>> import numpy as np
    >>> from interpret_spectral.store.sites import AttentionSite
    >>> site = AttentionSite("blocks.0.attn", "blocks.0.attn", 0, 2, 4, 0.5, (2, 2), ("cls",) + ("patch",) * 4)
    >>> writer = create_store([site], attrs={"model": "toy"}, samples_requested=1)
    >>> writer.append(["img0"], {"blocks.0.attn": {v: np.ones((1, 2, 5, 4)) for v in "qkv"}})
    >>> store = writer.close()
    >>> store["blocks.0.attn"]["token_kind"].values[:2].tolist(), store.attrs["complete"]
    (['cls', 'patch'], 1)
    """
    return StoreWriter(sites, **options)


# help() and generated API docs show the options with their defaults, as StoreWriter takes them.
create_store.__signature__ = inspect.signature(StoreWriter).replace(  # type: ignore[attr-defined]
    return_annotation="StoreWriter"
)

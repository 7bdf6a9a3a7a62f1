"""Writing stores: create, append batch by batch, resume.

Writing goes through :class:`StoreWriter`, which appends batch by batch with h5py
and flushes after each batch, so that a crash loses at most the batch in flight.
The file stays readable by ``xarray.open_datatree(path, engine="h5netcdf")``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xarray as xr

from interpret_spectral.store.sites import AttentionSite
from interpret_spectral.store.format import FORMAT, FORMAT_VERSION, StoreError, _STRING_DTYPE, _json_safe_attrs, _package_version
from interpret_spectral.store.reader import open_store, site_names

__all__ = ["StoreWriter", "create_store"]

class StoreWriter:
    """Append-only writer of a store, in memory or on disk.

    Use :func:`create_store` to make one.  :meth:`append` writes one batch;
    :meth:`close` returns the store (an in-memory :class:`xarray.DataTree`, or the
    lazily opened file).

    On disk the file is written with h5netcdf's legacy API (netCDF4 layout, the
    ``sample`` dimension unlimited) and flushed after every batch.
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
    ) -> None:
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        if not sites:
            raise ValueError("a store needs at least one attention site")
        names = [site.name for site in sites]
        if len(set(names)) != len(names):
            raise ValueError(f"site names must be unique, got {names}")
        unknown = set(capture) - {"q", "k", "v", "features"}
        if unknown:
            raise ValueError(f"capture must name q, k, v or features, got {sorted(unknown)}")
        self.sites = sorted(sites, key=lambda s: s.order)
        self.capture = tuple(capture)
        self.extra_dims = {k: np.asarray(v) for k, v in (extra_dims or {}).items()}
        self.feature_dims = dict(feature_dims or {})
        self.dtype = np.dtype(dtype)
        self.pixels_shape = pixels_shape
        self.path = Path(path) if path is not None else None
        self.root_attrs = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": _package_version(),
            **(attrs or {}),
        }
        self._memory: list[dict[str, Any]] = []
        self._file = None
        self._written: list[str] = []
        if self.path is not None:
            self._open_file(resume)

    # -- on-disk layout -----------------------------------------------------------------
    def _var_dims(self, var: str) -> tuple[str, ...]:
        extra = tuple(self.extra_dims)
        if var == "features":
            return ("sample", *extra, "token", "feature")
        return ("sample", *extra, "head", "token", "channel")

    def _var_shape(self, site: AttentionSite, var: str) -> tuple[int, ...]:
        extra = tuple(len(v) for v in self.extra_dims.values())
        if var == "features":
            if site.name not in self.feature_dims:
                raise ValueError(f"feature width of site {site.name!r} is unknown")
            return (*extra, site.num_tokens, self.feature_dims[site.name])
        return (*extra, site.num_heads, site.num_tokens, site.head_dim)

    def _open_file(self, resume: bool) -> None:
        import h5netcdf.legacyapi as netcdf

        assert self.path is not None
        if self.path.exists():
            if not resume:
                raise FileExistsError(
                    f"{self.path} exists; pass resume=True to continue it, or choose another path"
                )
            existing = open_store(self.path)
            self._check_compatible(existing)
            self._written = list(map(str, existing["sample"].values))
            existing.close()
            self._file = h5py.File(self.path, "r+")
            self._resize(len(self._written))  # drop rows of a batch that crashed mid-write
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".partial")
        f = netcdf.Dataset(tmp, "w")
        f.attrs.update(_json_safe_attrs(self.root_attrs))
        f.createDimension("sample", None)
        sample = f.createVariable("sample", str, ("sample",))
        sample.setncattr("long_name", "sample id")
        for name, values in self.extra_dims.items():
            f.createDimension(name, len(values))
            if values.dtype.kind in "US":
                coord = f.createVariable(name, str, (name,))
                coord[:] = np.asarray([str(value) for value in values], dtype=object)
            else:
                coord = f.createVariable(name, values.dtype, (name,))
                coord[:] = values
        if self.pixels_shape is not None:
            f.createDimension("y", self.pixels_shape[0])
            f.createDimension("x", self.pixels_shape[1])
            f.createDimension("rgb", 3)
            f.createVariable(
                "pixels", "u1", ("sample", "y", "x", "rgb"),
                chunksizes=(1, *self.pixels_shape, 3), zlib=True,
            )
        for site in self.sites:
            group = f.createGroup(site.name)
            group.attrs.update(_json_safe_attrs(site.attrs()))
            group.createDimension("token", site.num_tokens)
            group.createDimension("head", site.num_heads)
            group.createDimension("channel", site.head_dim)
            token_y, token_x = site.token_yx()
            group.createVariable("token_y", "i4", ("token",))[:] = token_y
            group.createVariable("token_x", "i4", ("token",))[:] = token_x
            kind = group.createVariable("token_kind", str, ("token",))
            kind[:] = np.asarray(site.token_kinds, dtype=object)
            for var in self.capture:
                if var == "features":
                    group.createDimension("feature", self.feature_dims[site.name])
                shape = self._var_shape(site, var)
                # h5netcdf's default fill values know no float16: give one.
                fill = {"fillvalue": np.float16(np.nan)} if self.dtype == np.float16 else {}
                variable = group.create_variable(
                    var, self._var_dims(var), dtype=self.dtype, chunks=(1, *shape), **fill
                )
                # CF convention: xarray reads these as the variable's coordinates.
                variable.setncattr("coordinates", "token_y token_x token_kind")
        f.sync()
        f.close()
        # The file is complete as an empty store only now: a crash above leaves no half-made store.
        os.replace(tmp, self.path)
        # Appends go through h5py: resize along ``sample``, write, flush.  (h5netcdf only
        # records the grown unlimited dimension when the file is closed.)
        self._file = h5py.File(self.path, "r+")

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

        Examples
        --------
        >>> import numpy as np
        >>> from interpret_spectral.store.sites import AttentionSite
        >>> site = AttentionSite("a", "a", 0, 1, 2, 1.0, (1, 2), ("patch", "patch"))
        >>> w = create_store([site])
        >>> w.append(["s0"], {"a": {v: np.zeros((1, 1, 2, 2)) for v in "qkv"}})
        >>> w.close()["a"]["q"].dims
        ('sample', 'head', 'token', 'channel')
        """
        samples = [str(s) for s in samples]
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
        if self.path is None:
            self._memory.append({"sample": samples, "arrays": checked, "pixels": pixels})
            return
        f = self._file
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
        f["sample"][start:stop] = np.asarray(samples, dtype=object)
        f.flush()
        self._written.extend(samples)

    def _resize(self, length: int) -> None:
        f = self._file
        datasets = [f["sample"]] + ([f["pixels"]] if "pixels" in f else [])
        datasets += [f[site.name][var] for site in self.sites for var in self.capture]
        for dataset in datasets:
            dataset.resize(length, axis=0)

    def close(self) -> xr.DataTree:
        """Finish writing and return the store (opened lazily when on disk)."""
        if self.path is not None:
            if self._file is not None:
                self._file.close()
                self._file = None
            return open_store(self.path)
        return self._memory_tree()

    def abort(self) -> None:
        """Close the file without returning it (used on errors); written batches stay."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _memory_tree(self) -> xr.DataTree:
        samples = [sid for batch in self._memory for sid in batch["sample"]]
        root_vars: dict[str, Any] = {}
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
            attrs=_json_safe_attrs(self.root_attrs),
        )
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
            children[site.name] = xr.Dataset(
                data_vars,
                coords={
                    "token_y": ("token", token_y),
                    "token_x": ("token", token_x),
                    "token_kind": ("token", np.asarray(site.token_kinds, dtype=str)),
                },
                attrs=_json_safe_attrs(site.attrs()),
            )
        tree = xr.DataTree(root)
        for name, ds in children.items():
            tree[name] = xr.DataTree(ds)
        return tree


def create_store(
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
) -> StoreWriter:
    """Start a store for ``sites``: in memory when ``path`` is None, else an HDF5 file.

    Parameters
    ----------
    sites : sequence of AttentionSite
        The attention sites; groups are written in their forward ``order``.
    path : path-like, optional
        File to write; it must not exist unless ``resume=True``.
    capture : sequence of str
        Variables per site, from ``"q"``, ``"k"``, ``"v"``, ``"features"``.
    extra_dims : mapping, optional
        Extra dimensions after ``sample`` with their coordinates, e.g.
        ``{"timestep": [999, 500]}``.
    feature_dims : mapping, optional
        Width of ``features`` per site name (required when capturing features).
    attrs : mapping, optional
        Root attributes (model, adapter, input size, user metadata).
    dtype : {"float32", "float16"}
        Storage dtype of q, k, v and features.
    pixels_shape : tuple of int, optional
        ``(y, x)`` of the ``pixels`` variable, when input images are stored.
    resume : bool
        Continue an existing file written with the same sites.

    Returns
    -------
    StoreWriter

    Examples
    --------
    >>> import numpy as np
    >>> from interpret_spectral.store.sites import AttentionSite
    >>> site = AttentionSite("blocks.0.attn", "blocks.0.attn", 0, 2, 4, 0.5, (2, 2), ("cls",) + ("patch",) * 4)
    >>> writer = create_store([site], attrs={"model": "toy"})
    >>> writer.append(["img0"], {"blocks.0.attn": {v: np.ones((1, 2, 5, 4)) for v in "qkv"}})
    >>> store = writer.close()
    >>> store["blocks.0.attn"]["token_kind"].values[:2].tolist()
    ['cls', 'patch']
    """
    return StoreWriter(
        sites,
        path=path,
        capture=capture,
        extra_dims=extra_dims,
        feature_dims=feature_dims,
        attrs=attrs,
        dtype=dtype,
        pixels_shape=pixels_shape,
        resume=resume,
    )



"""Reading stores: open lazily, and the one reading API (sites, samples, patch tokens).

Every array of an opened store is read through a checked wrapper: a checksum that
fails (a flipped byte on disk) raises :class:`~interpret_spectral.store.format.StoreIntegrityError`
naming the variable, the site and the samples, never a raw ``OSError`` or changed values.

Examples
--------
>>> from interpret_spectral.store import open_store, site_names  # doctest: +SKIP
>>> store = open_store("activations.h5")  # doctest: +SKIP
>>> site_names(store)[:2]  # doctest: +SKIP
['blocks.0.attn', 'blocks.1.attn']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from interpret_spectral.store.files import inspect_file, is_checksum_error, open_error, sample_span
from interpret_spectral.store.format import StoreError, StoreIntegrityError, validate_store
from interpret_spectral.store.h5netcdf_sizes import install as install_size_cache
from interpret_spectral.store.remote import RemotePath, location

__all__ = ["open_store", "require_complete", "site_names", "sample_ids", "patch_tokens", "verify_store"]

_VERIFY_ROWS = 64  # samples read at once by verify_store()


class _CheckedArray(BackendArray):
    """A lazily read array whose failed checksums become StoreIntegrityError naming what and where."""

    def __init__(self, variable: xr.Variable, name: str, group: str, source: str, ids: list[str]) -> None:
        self.variable = variable
        self.shape = variable.shape
        self.dtype = variable.dtype
        self.name, self.group, self.source, self.ids = name, group, source, ids
        self.per_sample = variable.dims[:1] == ("sample",)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.OUTER, self._read)

    def _read(self, key: tuple[Any, ...]) -> np.ndarray:
        try:
            return np.asarray(self.variable[key].values)
        except (OSError, KeyError, ValueError, RuntimeError) as error:
            if not is_checksum_error(error):
                raise
            where = f"site {self.group!r}" if self.group else "the root"
            span = sample_span(key, self.ids) if self.per_sample else "its data"
            raise StoreIntegrityError(
                f"{self.source} is damaged: checksum error reading {self.name!r} of {where}, {span}; "
                "restore the file, or rerun the probe for these samples into a new store"
            ) from error


def _checked_tree(tree: xr.DataTree, source: str, ids: list[str]) -> xr.DataTree:
    nodes: dict[str, xr.Dataset] = {}
    for node in tree.subtree:
        ds = node.to_dataset(inherit=False)
        group = node.path.strip("/")
        replaced = {}
        for name, variable in ds.variables.items():
            if name in ds.indexes:
                continue
            wrapped = indexing.LazilyIndexedArray(_CheckedArray(variable, str(name), group, source, ids))
            replaced[name] = xr.Variable(variable.dims, wrapped, variable.attrs, variable.encoding)
        nodes[node.path] = ds.assign_coords({k: v for k, v in replaced.items() if k in ds.coords}).assign(
            {k: v for k, v in replaced.items() if k not in ds.coords}
        )
    return xr.DataTree.from_dict(nodes)


def _completeness(tree: xr.DataTree, requested: int | None, finished: bool | None) -> None:
    """Record in memory whether the store holds every sample it was asked for (attrs of the opened tree)."""
    n = int(tree.sizes.get("sample", 0))
    if requested is not None:
        complete = n >= requested
    else:
        complete = True if finished is None else finished
    tree.attrs["samples_written"] = n
    tree.attrs["complete"] = int(complete)


def open_store(path: str | os.PathLike[str] | RemotePath) -> xr.DataTree:
    """Open a store file lazily and check that it is one.

    Before anything is read, the file is checked with h5py: every per-sample array
    must store the rows it declares (an edited dimension is refused before it is
    allocated), the sample ids must match their CRC-32, and every dimension, grid,
    head count and scale is checked against the data (:func:`validate_store`).  Rows
    written by a batch that crashed before naming its samples are left out.

    The opened tree tells whether it is complete: ``attrs["samples_requested"]`` (when
    the writer knew it), ``attrs["samples_written"]`` and ``attrs["complete"]`` (1 or
    0); see :func:`require_complete`.

    Parameters
    ----------
    path : path-like
        An HDF5 file written by :func:`create_store` or :func:`interpret_spectral.probe`, a
        zarr v3 store (a folder ``*.zarr``, :mod:`interpret_spectral.store.zarr_store`), or
        the folder of a sharded store (:mod:`interpret_spectral.store.shards`: opened as one
        Dask-backed tree).  A string with ``://`` is an fsspec URL (``s3://``, ``gs://``,
        ``memory://``; ``file://`` is a local path), read-only: a zarr store or a sharded
        store of zarr shards there (:mod:`interpret_spectral.store.remote`).

    Returns
    -------
    xarray.DataTree

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    StoreError
        ``path`` is a folder without a sharded store's ``manifest.json``, or an HDF5
        store at a URL (HDF5 is read from local paths).
    StoreLockedError
        Another process has the file open for writing (it is intact).
    StoreError
        The file is empty, truncated, not a store, of an unsupported version, or
        declares dimensions or attributes its data contradicts.
    KeyboardInterrupt
        Ctrl-C while opening is an interruption, never reported as damage.

    Examples
    --------
    >>> store = open_store("activations.h5")  # doctest: +SKIP
    >>> list(store.children)  # doctest: +SKIP
    ['blocks.0.attn', 'blocks.1.attn', ...]
    """
    if not isinstance(path, (str, os.PathLike, RemotePath)):
        raise TypeError(f"open_store() takes the path or URL of a store, got {type(path).__name__}")
    path = location(path).expanduser()  # a URL ("://") is read through fsspec: store/remote.py
    if not path.exists():
        raise FileNotFoundError(f"no store at {path}")
    if path.is_dir():
        from interpret_spectral.store.zarr_store import is_zarr_store, read_zarr_tree

        if is_zarr_store(path):  # a zarr v3 store (store/zarr_store.py): the same tree, the same checks
            tree, facts = read_zarr_tree(path)
            checked = _checked_tree(tree, str(path), facts.ids)
            validate_store(checked, source=str(path))
            _completeness(checked, facts.samples_requested, facts.writing_finished)
            return checked
        # a sharded store (store/shards.py); a folder without manifest.json is refused there
        from interpret_spectral.store.shards import open_sharded_store

        return open_sharded_store(path, open_store)
    if isinstance(path, RemotePath):
        raise StoreError(f"{path} is a file, not a zarr store: HDF5 stores are read from local paths; copy it to a "
                         "local disk, or write a zarr store (out='name.zarr') for object stores")
    if path.stat().st_size == 0:
        raise StoreError(f"{path} is empty (0 bytes); it is not a store: rerun the probe")
    facts = inspect_file(path)
    install_size_cache()
    try:
        tree = xr.open_datatree(path, engine="h5netcdf", phony_dims="sort")
    except KeyboardInterrupt:
        raise
    except Exception as error:  # h5py raises OSError / ValueError of several kinds
        raise open_error(path, error) from error
    whole = tree
    try:
        named = len(facts.ids)
        if int(tree.sizes.get("sample", named)) != named:
            # Named rows are a prefix: ids are written last in every batch.
            tree = tree.isel(sample=slice(0, named))
        checked = _checked_tree(tree, str(path), facts.ids)
        validate_store(checked, source=str(path))
    except BaseException:
        whole.close()
        raise
    checked.set_close(whole.close)
    _completeness(checked, facts.samples_requested, facts.writing_finished)
    return checked


def require_complete(tree: xr.DataTree, allow_incomplete: bool = False) -> xr.DataTree:
    """Refuse a store that holds fewer samples than it was asked for, saying how to resume.

    Parameters
    ----------
    tree : xarray.DataTree
        A store from :func:`open_store` or :func:`interpret_spectral.probe`.
    allow_incomplete : bool
        Return the store even when it is incomplete.

    Returns
    -------
    xarray.DataTree
        ``tree`` itself.

    Raises
    ------
    StoreError
        The store is incomplete and ``allow_incomplete`` is false.

    Examples
    --------
    >>> from interpret_spectral.synthetic import planted_store
    >>> store = planted_store(n_samples=1)
    >>> require_complete(store) is store
    True
    >>> store.attrs["samples_requested"] = 3
    >>> require_complete(store)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    StoreError: the store holds 1 of 3 samples; resume with probe(..., resume=True) ...
    """
    if allow_incomplete:
        return tree
    n = int(tree.sizes.get("sample", 0))
    requested = tree.attrs.get("samples_requested")
    requested = int(np.asarray(requested).reshape(())) if requested is not None else None
    complete = tree.attrs.get("complete", 1)
    source = tree.encoding.get("source", "the store") if hasattr(tree, "encoding") else "the store"
    if requested is not None and n < requested:
        raise StoreError(
            f"{source} holds {n} of {requested} samples; resume with probe(..., resume=True) (the same "
            "inputs and out=) to finish it, or pass allow_incomplete=True to use the samples it holds"
        )
    if requested is None and not int(complete):
        raise StoreError(
            f"{source} was not finished (its writer never closed; {n} samples); resume with "
            "probe(..., resume=True) to finish it, or pass allow_incomplete=True to use the samples it holds"
        )
    return tree


def verify_store(path: str | os.PathLike[str], progress: bool = False) -> int:
    """Read every array of a store back and check every checksum; return the samples verified.

    Parameters
    ----------
    path : path-like
        A store file.
    progress : bool
        Show a progress bar over sites.

    Raises
    ------
    StoreIntegrityError
        An array whose data fails its checksum, naming the variable, site and samples.

    Examples
    --------
    >>> from interpret_spectral.synthetic import planted_store
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "s.h5")
    >>> planted_store(n_samples=2, path=path).close()
    >>> verify_store(path)
    2
    """
    from tqdm.auto import tqdm

    tree = open_store(path)
    try:
        for node in tqdm(list(tree.subtree), disable=not progress, desc="verify", unit="group"):
            for variable in node.to_dataset(inherit=False).variables.values():
                if variable.dims[:1] != ("sample",):
                    variable.values
                    continue
                n = int(variable.shape[0])
                for start in range(0, n, _VERIFY_ROWS):
                    try:
                        variable[start:start + _VERIFY_ROWS].values
                    except StoreIntegrityError:
                        for row in range(start, min(start + _VERIFY_ROWS, n)):  # name the first damaged sample
                            variable[row:row + 1].values
                        raise
        return int(tree.sizes["sample"])
    finally:
        tree.close()


def site_names(tree: xr.DataTree) -> list[str]:
    """Names of the store's attention sites in forward order.

    Examples
    --------
    >>> site_names(store)  # doctest: +SKIP
    ['blocks.0.attn', 'blocks.1.attn']
    """
    return sorted(tree.children, key=lambda name: int(tree[name].attrs["order"]))


def sample_ids(tree: xr.DataTree) -> list[str]:
    """The store's sample ids, in write order.

    Examples
    --------
    >>> sample_ids(store)  # doctest: +SKIP
    ['astronaut', 'coffee']
    """
    return [str(s) for s in tree["sample"].values]


def patch_tokens(
    tree: xr.DataTree,
    site: str,
    var: str,
    samples: int | slice | Sequence[int] = slice(None),
    timesteps: int | slice | Sequence[int] | None = None,
) -> np.ndarray:
    """Read one variable of one site for the patch tokens only, in row-major grid order.

    Only the requested samples are read from disk.

    Parameters
    ----------
    tree : xarray.DataTree
        A store.
    site : str
        The site's group name.
    var : {"q", "k", "v", "features"}
        The variable.
    samples : int, slice or sequence of int
        Positional sample selection (an int drops the sample dimension).
    timesteps : int, slice or sequence of int, optional
        Positional timestep selection, for stores with a ``timestep`` dimension.

    Returns
    -------
    numpy.ndarray
        float32, ``(..., head, grid_h * grid_w, channel)`` for q/k/v (``(..., tokens,
        feature)`` for features); token ``i`` sits at row ``i // grid_w``, column
        ``i % grid_w``.

    Examples
    --------
    >>> q = patch_tokens(store, "blocks.11.attn", "q", samples=0)  # doctest: +SKIP
    >>> q.shape  # doctest: +SKIP
    (6, 1024, 64)
    """
    if site not in tree.children:
        raise KeyError(f"the store has no site {site!r}; it holds {site_names(tree)[:6]}")
    node = tree[site]
    if var not in node.data_vars:
        raise KeyError(f"site {site!r} has no variable {var!r}; it holds {sorted(node.data_vars)}")
    data = node[var]
    selection: dict[str, Any] = {"sample": samples}
    if "timestep" in data.dims:
        if timesteps is not None:
            selection["timestep"] = timesteps
    elif timesteps is not None:
        raise ValueError(f"site {site!r} has no timestep dimension; pass timesteps=None")
    token_y = node["token_y"].values
    token_x = node["token_x"].values
    patch = np.flatnonzero(token_y >= 0)
    grid_w = int(node.attrs["grid_w"])
    order = patch[np.argsort(token_y[patch] * grid_w + token_x[patch], kind="stable")]
    if order.size and np.array_equal(order, np.arange(order[0], order[0] + order.size)):
        # the usual layout (class/register tokens first, then the grid row by row): a slice is a
        # plain view in memory and one hyperslab on disk, where a list of positions is a gather
        selection["token"] = slice(int(order[0]), int(order[0]) + order.size)
    else:
        selection["token"] = order
    return np.asarray(data.isel(selection).values, dtype=np.float32)

"""Reading stores: open lazily, and the one reading API (sites, samples, patch tokens).

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
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from interpret_spectral.store.format import StoreError, validate_store

__all__ = ["open_store", "site_names", "sample_ids", "patch_tokens"]


def open_store(path: str | os.PathLike[str]) -> xr.DataTree:
    """Open a store file lazily and check that it is one.

    Rows written by a batch that crashed before naming its samples are left out.

    Parameters
    ----------
    path : path-like
        An HDF5 file written by :func:`create_store` or :func:`interpret_spectral.probe`.

    Returns
    -------
    xarray.DataTree

    Raises
    ------
    StoreError
        When the file is truncated, is not a store, or has an unsupported version.

    Examples
    --------
    >>> store = open_store("activations.h5")  # doctest: +SKIP
    >>> list(store.children)  # doctest: +SKIP
    ['blocks.0.attn', 'blocks.1.attn', ...]
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no store at {path}")
    try:
        tree = xr.open_datatree(path, engine="h5netcdf", phony_dims="sort")
    except Exception as error:  # h5py raises OSError / ValueError of several kinds
        raise StoreError(
            f"{path} cannot be read as HDF5 ({type(error).__name__}: {error}); the file is truncated or "
            "not a store: rerun the probe (resume=True keeps the complete batches of an interrupted run "
            "only while the file itself is intact)"
        ) from error
    try:
        validate_store(tree, source=str(path))
    except StoreError:
        tree.close()
        raise
    names = tree["sample"].values
    named = np.array([bool(n) for n in names])
    if not named.all():
        # Named rows are a prefix: ids are written last in every batch.
        whole = tree
        tree = whole.isel(sample=slice(0, int(named.sum())))
        tree.set_close(whole.close)
    return tree



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
    selection["token"] = order
    return np.asarray(data.isel(selection).values, dtype=np.float32)

"""Choosing what an analysis reads from a store: sites, timesteps, samples, grids, heads.

Every analysis (per-image and dataset-level decompositions, contributions, baselines)
selects from a store through these helpers, so that a selection means the same thing
everywhere and every attribute read from a file is checked against the data the file
actually holds before anything is allocated from it.

Examples
--------
>>> from interpret_spectral.synthetic import planted_store
>>> store = planted_store(n_samples=2, grids=((4, 4), (2, 2)))
>>> select_layers(store, -1), site_grid(store, "blocks.0.attn"), select_samples(store, [1])
(['blocks.1.attn'], (4, 4), [1])
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from interpret_spectral.store.format import StoreError, validate_store
from interpret_spectral.store.reader import open_store, require_complete, sample_ids, site_names

__all__ = [
    "as_store",
    "select_layers",
    "select_timesteps",
    "select_samples",
    "site_grid",
    "site_heads",
]


def as_store(store: xr.DataTree | str | os.PathLike[str], allow_incomplete: bool = False) -> xr.DataTree:
    """A validated, complete store from a DataTree or the path of a store file (opened lazily).

    A store holding fewer samples than its probe was asked for is refused (saying how to
    resume) unless ``allow_incomplete`` is true; see :func:`~interpret_spectral.store.reader.require_complete`.

    Examples
    --------
    >>> from interpret_spectral.synthetic import planted_store
    >>> as_store(planted_store(n_samples=1)).attrs["format"]
    'interpret_spectral.store'
    """
    if isinstance(store, (str, os.PathLike)):
        tree = open_store(store)
        source = str(store)
    elif isinstance(store, xr.DataTree):
        validate_store(store)
        tree, source = store, "the store"
    else:
        raise TypeError(f"store must be an xarray.DataTree or a path to a store file, got {type(store).__name__}")
    if int(tree.sizes.get("sample", 0)) == 0:
        raise StoreError(f"{source} holds no samples: there is nothing to analyse; probe images into it first")
    return require_complete(tree, allow_incomplete)


def select_layers(store: xr.DataTree, layers: Any = None) -> list[str]:
    """Names of the store's sites picked by forward index, name or glob pattern.

    Parameters
    ----------
    store : xarray.DataTree
        A store.
    layers : None, int, str or sequence of int / str
        ``None`` keeps every site; ints index the forward order (negative from the
        end); strings are site names or glob patterns such as ``"blocks.1*"``.

    Returns
    -------
    list of str
        The chosen site names, in forward order.

    Examples
    --------
    >>> from interpret_spectral.synthetic import planted_store
    >>> select_layers(planted_store(n_samples=1, grids=((4, 4), (2, 2))), -1)
    ['blocks.1.attn']
    """
    names = site_names(store)
    if layers is None:
        return names
    if isinstance(layers, (int, np.integer, str)):
        layers = [layers]
    if not isinstance(layers, Sequence) or len(layers) == 0:
        raise ValueError(f"layers must be None, an int, a string or a non-empty sequence of them, got {layers!r}")
    chosen: set[str] = set()
    for selector in layers:
        if isinstance(selector, (int, np.integer)) and not isinstance(selector, bool):
            if not -len(names) <= selector < len(names):
                raise IndexError(f"layer index {selector} is out of range for the store's {len(names)} sites")
            chosen.add(names[selector])
        elif isinstance(selector, str):
            matched = [name for name in names if fnmatch.fnmatchcase(name, selector)]
            if not matched:
                raise KeyError(f"no site of the store matches {selector!r}; its sites are: {', '.join(names)}")
            chosen.update(matched)
        else:
            raise TypeError(f"layers must hold ints or strings, got {type(selector).__name__}")
    return [name for name in names if name in chosen]


def select_timesteps(
    store: xr.DataTree, names: Sequence[str], timesteps: Any = None
) -> tuple[list[int] | None, list[Any] | None]:
    """Positions and coordinate values of the chosen timesteps (``(None, None)`` without a timestep dim).

    Parameters
    ----------
    store : xarray.DataTree
        A store.
    names : sequence of str
        The chosen sites (all with or all without a ``timestep`` dimension).
    timesteps : None, value or sequence of values
        Timestep coordinate values; all when None.

    Examples
    --------
    >>> from interpret_spectral.synthetic import planted_store
    >>> store = planted_store(n_samples=1, grids=((4, 4),), timesteps=[100, 500])
    >>> select_timesteps(store, ["blocks.0.attn"], 500)
    ([1], [500])
    """
    with_dim = ["timestep" in store[name].dims for name in names]
    if not any(with_dim):
        if timesteps is not None:
            raise ValueError("the store has no timestep dimension; pass timesteps=None")
        return None, None
    if not all(with_dim):
        raise ValueError("some chosen sites have a timestep dimension and others do not; choose sites of one kind")
    coordinate = store["timestep"].values if "timestep" in store.coords else np.arange(store.sizes["timestep"])
    values = list(coordinate.tolist())
    if timesteps is None:
        return list(range(len(values))), values
    wanted = [timesteps] if np.isscalar(timesteps) else list(timesteps)
    if not wanted:
        raise ValueError("timesteps must not be empty; pass None for every recorded timestep")
    positions = []
    for value in wanted:
        if value not in values:
            raise KeyError(f"timestep {value!r} is not in the store; it recorded {values}")
        positions.append(values.index(value))
    return positions, [values[p] for p in positions]


def select_samples(store: xr.DataTree, samples: Any = None) -> list[int]:
    """Positions of the chosen samples, by id or position (all when None).

    Examples
    --------
    >>> from interpret_spectral.synthetic import planted_store
    >>> select_samples(planted_store(n_samples=3), ["planted-2", 0])
    [2, 0]
    """
    ids = sample_ids(store)
    if samples is None:
        return list(range(len(ids)))
    if isinstance(samples, (str, int, np.integer)):
        samples = [samples]
    positions = []
    for item in samples:
        if isinstance(item, str):
            if item not in ids:
                raise KeyError(f"sample {item!r} is not in the store (it holds {len(ids)} samples, e.g. {ids[:3]})")
            positions.append(ids.index(item))
        elif isinstance(item, (int, np.integer)) and -len(ids) <= item < len(ids):
            positions.append(int(item) % len(ids))
        else:
            raise IndexError(f"sample {item!r} is neither an id nor a position of the store's {len(ids)} samples")
    return positions


def _positive_attr(store: xr.DataTree, name: str, key: str) -> int:
    value = store[name].attrs[key]
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise StoreError(f"site {name!r} has a non-integer {key} attribute {value!r}: the store is damaged") from None
    if number < 1 or number != float(np.asarray(value).ravel()[0]):
        raise StoreError(f"site {name!r} has {key}={value!r}, not a positive integer: the store is damaged")
    return number


def site_grid(store: xr.DataTree, name: str) -> tuple[int, int]:
    """The site's token grid ``(h, w)``, checked against the patch tokens the store holds.

    Raises :class:`~interpret_spectral.store.format.StoreError` when the attributes
    name a grid other than the patch tokens present (a damaged or hand-edited file),
    before anything is allocated from them.

    Examples
    --------
    >>> from interpret_spectral.synthetic import planted_store
    >>> site_grid(planted_store(n_samples=1, grids=((4, 6),)), "blocks.0.attn")
    (4, 6)
    """
    h = _positive_attr(store, name, "grid_h")
    w = _positive_attr(store, name, "grid_w")
    node = store[name]
    patches = int(np.count_nonzero(np.asarray(node["token_y"].values) >= 0))
    if h * w != patches:
        raise StoreError(
            f"site {name!r} says its grid is {h} x {w} = {h * w} tokens, but the store holds {patches} patch "
            "tokens for it: the site's attributes are damaged; re-probe the model"
        )
    return h, w


def site_heads(store: xr.DataTree, name: str) -> int:
    """The site's number of heads, checked against the ``head`` dimension of its arrays.

    Examples
    --------
    >>> from interpret_spectral.synthetic import planted_store
    >>> site_heads(planted_store(n_samples=1, num_heads=3), "blocks.0.attn")
    3
    """
    heads = _positive_attr(store, name, "num_heads")
    node = store[name]
    present = {int(node[var].sizes["head"]) for var in node.data_vars if "head" in node[var].dims}
    if present and present != {heads}:
        raise StoreError(
            f"site {name!r} says num_heads={heads}, but its arrays hold {sorted(present)} heads: the site's "
            "attributes are damaged; re-probe the model"
        )
    return heads

"""Stores with planted structure: attention whose groups are known, for tests, docs and benchmarks.

:func:`planted_store` writes a store in the format of :mod:`interpret_spectral.store`
whose sites attend within known groups of tokens.  Every sample has its own label
map: ``n_groups`` random points in the unit square and, on the coarsest grid, every
cell takes the label of the nearest point to its centre (a Voronoi partition); a cell
of a finer grid takes the label of the coarsest cell holding its centre, so that the
groups of all grids agree (exactly nested for grids that are multiples of the
coarsest).  Per site and head
the groups get orthonormal embeddings ``e_g`` (random ones when ``n_groups >
head_dim``), and

- ``q_i = a e_{g(i)} + noise``, ``k_i = a e_{g(i)} + noise``: a token's attention
  concentrates on its own group (logit gap ``scale * a^2``, ``a`` set by ``strength``);
- ``v_i = e_{g(i)} + noise``: values of one group point the same way (``"vv"`` graph).

Every site has one ``"cls"`` token first, with random q/k/v, which the
decomposition must leave out.  The ground truth at the finest grid is the root
variable ``planted_labels`` ``(sample, y, x)`` of the returned store (also in the
file when ``path`` is given).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from interpret_spectral.store.sites import AttentionSite
from interpret_spectral.store.files import array_filters
from interpret_spectral.store.writer import create_store
from interpret_spectral.store.reader import open_store

__all__ = ["planted_store", "planted_labels", "LABELS_VARIABLE"]

#: Root variable of a planted store holding the ground-truth labels at the finest grid.
LABELS_VARIABLE = "planted_labels"


def planted_labels(
    centers: np.ndarray, grid: tuple[int, int]
) -> np.ndarray:
    """Label of every cell of ``grid``: the index of the nearest of ``centers`` to the cell centre.

    Parameters
    ----------
    centers : numpy.ndarray
        ``(groups, 2)`` points ``(y, x)`` in the unit square.
    grid : (int, int)
        ``(h, w)``.

    Returns
    -------
    numpy.ndarray
        ``(h, w)`` int labels.

    Examples
    --------
    >>> import numpy as np
    >>> planted_labels(np.array([[0.25, 0.5], [0.75, 0.5]]), (2, 3)).tolist()
    [[0, 0, 0], [1, 1, 1]]
    """
    h, w = grid
    ys = (np.arange(h) + 0.5) / h
    xs = (np.arange(w) + 0.5) / w
    cells = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1)
    distance = ((cells[:, :, None, :] - np.asarray(centers)[None, None]) ** 2).sum(-1)
    return np.argmin(distance, axis=-1)


def _refine(coarse: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Labels on ``grid``: the label of the ``coarse`` cell holding each cell centre."""
    rows = ((np.arange(grid[0]) + 0.5) * coarse.shape[0] / grid[0]).astype(int)
    cols = ((np.arange(grid[1]) + 0.5) * coarse.shape[1] / grid[1]).astype(int)
    return coarse[np.ix_(rows, cols)]


def _group_embeddings(rng: np.random.Generator, n_groups: int, dim: int) -> np.ndarray:
    if n_groups <= dim:
        basis, _ = np.linalg.qr(rng.standard_normal((dim, n_groups)))
        return basis.T
    vectors = rng.standard_normal((n_groups, dim))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def planted_store(
    n_samples: int = 2,
    grids: Sequence[tuple[int, int]] = ((8, 8), (4, 4)),
    num_heads: int = 2,
    head_dim: int = 8,
    n_groups: int = 3,
    seed: int = 0,
    timesteps: Sequence[int] | None = None,
    path: str | os.PathLike[str] | None = None,
    strength: float = 6.0,
    noise: float = 0.2,
) -> xr.DataTree:
    """A store of ``len(grids)`` attention sites whose tokens attend within planted groups.

    Parameters
    ----------
    n_samples : int
        Number of samples (each with its own label map).
    grids : sequence of (int, int)
        Token grid of every site, in forward order (sites ``blocks.<i>.attn``).
    num_heads, head_dim : int
        Heads per site and channels per head.
    n_groups : int
        Number of groups; every group covers at least one token of every grid.
    seed : int
        Seeds everything.
    timesteps : sequence of int, optional
        Adds a ``timestep`` dimension with these coordinates (fresh noise per timestep).
    path : path-like, optional
        Write the store to this HDF5 file (must not exist) and return it opened lazily.
    strength : float
        Logit gap ``scale * a^2`` between a token's own group and the others.
    noise : float
        Root-mean-square norm of the noise vectors relative to the embeddings' (unit) norm.

    Returns
    -------
    xarray.DataTree
        The store; ``store["planted_labels"]`` ``(sample, y, x)`` holds the labels at
        the finest grid.

    Examples
    --------
    >>> store = planted_store(n_samples=1, grids=((6, 6), (3, 3)), n_groups=2)
    >>> store["planted_labels"].shape
    (1, 6, 6)
    >>> store["blocks.0.attn"]["q"].shape
    (1, 2, 37, 8)
    """
    grids = [tuple(int(v) for v in g) for g in grids]
    if not grids or any(len(g) != 2 or min(g) < 1 for g in grids):
        raise ValueError(f"grids must be a non-empty sequence of positive (h, w) pairs, got {grids}")
    for name, value in (("n_samples", n_samples), ("num_heads", num_heads), ("head_dim", head_dim),
                        ("n_groups", n_groups)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    coarsest = min(grids, key=lambda g: g[0] * g[1])
    if n_groups > coarsest[0] * coarsest[1]:
        raise ValueError(f"{n_groups} groups cannot all appear on the coarsest grid {coarsest}; use fewer groups")
    finest = max(grids, key=lambda g: g[0] * g[1])
    scale = head_dim**-0.5
    amplitude = np.sqrt(strength / scale)
    rng = np.random.default_rng(seed)
    sites = [
        AttentionSite(f"blocks.{i}.attn", f"blocks.{i}.attn", i, num_heads, head_dim, scale, grid,
                      ("cls",) + ("patch",) * (grid[0] * grid[1]))
        for i, grid in enumerate(grids)
    ]
    n_steps = 1 if timesteps is None else len(timesteps)
    extra = None if timesteps is None else {"timestep": list(timesteps)}
    writer = create_store(sites, path=path, extra_dims=extra, attrs={"model": "planted", "adapter": "synthetic"},
                          samples_requested=n_samples)
    truth = np.zeros((n_samples, *finest), dtype=np.int32)
    try:
        for sample in range(n_samples):
            while True:
                coarse = planted_labels(rng.uniform(size=(n_groups, 2)), coarsest)
                if len(np.unique(coarse)) == n_groups:
                    break
            truth[sample] = _refine(coarse, finest)
            arrays = {}
            for site in sites:
                labels = _refine(coarse, site.grid).ravel()
                n_tokens = site.num_tokens
                values = {var: np.zeros((n_steps, num_heads, n_tokens, head_dim)) for var in "qkv"}
                for head in range(num_heads):
                    embed = _group_embeddings(rng, n_groups, head_dim)
                    for step in range(n_steps):
                        for var, amp in (("q", amplitude), ("k", amplitude), ("v", 1.0)):
                            tokens = amp * embed[labels] + amp * noise / np.sqrt(head_dim) * rng.standard_normal((len(labels), head_dim))
                            cls = amp * rng.standard_normal((1, head_dim)) / np.sqrt(head_dim)
                            values[var][step, head] = np.concatenate([cls, tokens])
                arrays[site.name] = {
                    var: (value[None] if timesteps is not None else value[None, 0]) for var, value in values.items()
                }
            writer.append([f"planted-{sample}"], arrays)
    except BaseException:
        writer.abort()
        raise
    store = writer.close()
    if path is None:
        store[LABELS_VARIABLE] = xr.DataArray(truth, dims=("sample", "y", "x"))
        return store
    store.close()
    import h5netcdf

    with h5netcdf.File(Path(path), "a") as f:
        f.dimensions.update({"y": finest[0], "x": finest[1]})
        labels = f.create_variable(LABELS_VARIABLE, ("sample", "y", "x"), dtype="i4", data=truth,
                                   chunks=(1, *finest), **array_filters())
        labels.attrs.update(long_name="planted group labels",
                            description="Ground-truth group of every cell of the finest grid (planted_store).")
    return open_store(path)

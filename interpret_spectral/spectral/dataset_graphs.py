"""The dataset level's graphs and operators: top-k graphs per site over the tokens of many images.

Per attention site ``l`` (heads concatenated, patch tokens only) the graph links every
token to its ``intra`` most similar tokens of its own image and its ``inter`` most
similar tokens of the other images (the kind's unit features, e.g. unit queries
against unit keys for ``"qk"``), drops similarities not above ``threshold``,
symmetrises and row-normalises (:mod:`interpret_spectral.spectral.topk`).  With
``G_l`` the resampling from the output grid to the site's grid, the operator is
``M = mean_l (N / n_l) G_l^T sym(P_l) G_l`` per pass.

- :class:`SparseOperator`: ``M`` over all tokens of all samples as one scipy sparse
  matrix (neighbours from the whole dataset), for solvers that take the full graph;
- :class:`MinibatchOperator`: the paper's schedule for the gradient solver: every
  epoch a fresh order of the samples, split in minibatches, each with its own graphs
  (neighbours from the minibatch only), each used for ``steps_per_batch`` steps; its
  ``matmat`` is the last epoch's operator (for the final Rayleigh-Ritz step).

Both read the store one site at a time, in contiguous runs of samples, so memory
holds one site's unit features for all samples plus the sparse graphs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import xarray as xr

from interpret_spectral.spectral.eq4 import Eq4Draw, Eq4Term, SparseGraph, SparseProduct
from interpret_spectral.spectral.kinds import GraphKind
from interpret_spectral.spectral.resample import resampling_matrix
from interpret_spectral.spectral.site_graphs import NonFiniteError
from interpret_spectral.spectral.topk import intra_inter_topk, walk_matrix
from interpret_spectral.store.reader import patch_tokens, sample_ids
from interpret_spectral.store.selection import select_layers, select_timesteps, site_grid

__all__ = ["Source", "Settings", "sources", "SparseOperator", "MinibatchOperator", "full_operator"]

# Samples read from the store at once.
_READ_SAMPLES = 16


@dataclasses.dataclass(frozen=True)
class Source:
    """One graph: a site (at one timestep, for stores with timesteps)."""

    site: str
    timestep: int | None  # position along the store's timestep dimension
    label: str
    grid: tuple[int, int]
    weight: float = 1.0  # weight of the graph in M and in Eq. 4
    per_sample: tuple[int, ...] | None = None  # a timestep position per sample (instead of ``timestep``)

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the graphs are built."""

    kind: GraphKind
    intra: int
    inter: int
    threshold: float
    grid: tuple[int, int]
    resample: str
    chunk_size: int | None
    neighbours: str = "auto"  # cross-image neighbours: "auto", "exact" or "approximate" (topk.NEIGHBOUR_METHODS)
    # a distributed.Client: the brute-force neighbours in row blocks on its cluster (spectral.blocks)
    client: Any = dataclasses.field(default=None, compare=False, repr=False)


def sources(tree: xr.DataTree, kind: GraphKind, layers: Any, timesteps: Any) -> list[Source]:
    """The graphs: every chosen site, at every chosen timestep (as :func:`~interpret_spectral.decompose`)."""
    names = select_layers(tree, layers)
    for name in names:
        missing = [var for var in kind.variables if var not in tree[name].data_vars]
        if missing:
            raise ValueError(
                f"site {name!r} has no {', '.join(missing)}: graph={kind.name!r} needs "
                f"{' and '.join(kind.variables)}; probe with capture=('q', 'k', 'v')"
            )
    positions, values = select_timesteps(tree, names, timesteps)
    found = []
    for name in names:
        grid = site_grid(tree, name)
        if positions is None:
            found.append(Source(name, None, name, grid))
        else:
            found.extend(Source(name, p, f"{name}@t={v}", grid) for p, v in zip(positions, values))
    return found


def _tokens(tree: xr.DataTree, source: Source, var: str, samples: slice) -> torch.Tensor:
    """``(samples, tokens, heads * channels)`` patch tokens, heads concatenated; non-finite refused."""
    if source.per_sample is not None:  # one timestep per sample: read them all, keep each sample's own
        chosen = np.asarray(source.per_sample)[samples]
        array = patch_tokens(tree, source.site, var, samples=samples)[np.arange(len(chosen)), chosen]
    else:
        array = patch_tokens(tree, source.site, var, samples=samples, timesteps=source.timestep)
    bad = ~np.isfinite(array).reshape(array.shape[0], -1).all(axis=1)
    if bad.any():
        ids = sample_ids(tree)[samples][: int(bad.size)]
        named = [ids[i] for i in np.flatnonzero(bad)[:5]]
        raise NonFiniteError(
            f"{var} of site {source.label!r} holds NaN or infinity for samples {named}: the model produced "
            "non-finite attention for them; re-probe them, or leave the site out (layers=)"
        )
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 2, 1, 3).flatten(2)


def _read_site(tree: xr.DataTree, source: Source, kind: GraphKind, n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kind's unit ``(query, key)`` features of one site for every sample, ``(S, tokens, width)``.

    Read in contiguous runs of ``_READ_SAMPLES`` samples: one site in memory at a time.
    """
    runs = [slice(start, min(start + _READ_SAMPLES, n_samples)) for start in range(0, n_samples, _READ_SAMPLES)]
    return kind.dataset_features(lambda var: torch.cat([_tokens(tree, source, var, run) for run in runs]))


def _walk(query: torch.Tensor, key: torch.Tensor, source: Source, settings: Settings) -> sp.csr_matrix:
    width = query.shape[-1]
    values, indices = intra_inter_topk(
        query.reshape(-1, width), key.reshape(-1, width), source.tokens, settings.intra, settings.inter,
        chunk_size=settings.chunk_size, neighbours=settings.neighbours, client=settings.client,
    )
    return walk_matrix(values.numpy(), indices.numpy(), settings.threshold)


def _resampler(source: Source, settings: Settings) -> sp.csr_matrix | None:
    """``G`` from the output grid to the site's grid, or None when it is the identity."""
    g = sp.csr_matrix(resampling_matrix(settings.grid, source.grid, method=settings.resample))
    if g.shape[0] == g.shape[1] and abs(g - sp.identity(g.shape[0], format="csr")).max() < 1e-12:
        return None
    return g


class SparseOperator:
    """An explicit sparse symmetric ``M`` as a solver's operator (``size``, ``matmat``, ``dense``, ``sparse``).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> SparseOperator(sp.identity(3, format="csr")).matmat(np.ones((3, 1))).ravel().tolist()
    [1.0, 1.0, 1.0]
    """

    dtype = torch.float64
    device = torch.device("cpu")

    def __init__(self, matrix: sp.spmatrix) -> None:
        self.matrix = sp.csr_matrix(matrix)
        self.size = int(self.matrix.shape[0])

    def matmat(self, x: Any) -> np.ndarray:
        """``M x``."""
        return np.asarray(self.matrix @ np.asarray(x, dtype=np.float64))

    def dense(self) -> np.ndarray:
        """``M`` as a dense array (small problems only)."""
        return self.matrix.toarray()

    def sparse(self) -> sp.csr_matrix:
        """``M`` itself."""
        return self.matrix


def full_operator(tree: xr.DataTree, found: Sequence[Source], n_samples: int, settings: Settings,
                  progress: bool = False) -> SparseOperator:
    """``M = mean_l (N / n_l) G_l^T sym(P_l) G_l`` over all tokens of all samples (neighbours from the dataset)."""
    from tqdm.auto import tqdm

    n_out = settings.grid[0] * settings.grid[1]
    operator = sp.csr_matrix((n_samples * n_out, n_samples * n_out))
    for source in tqdm(found, disable=not progress, desc=f"dataset graphs ({settings.kind.name})", unit="site"):
        query, key = _read_site(tree, source, settings.kind, n_samples)
        walk = _walk(query, key, source, settings)
        del query, key
        symmetric = ((walk + walk.T) * 0.5).tocsr()
        g = _resampler(source, settings)
        if g is not None:
            blocks = sp.kron(sp.identity(n_samples, format="csr"), g, format="csr")
            symmetric = (blocks.T @ symmetric @ blocks).tocsr()
        # n_out / n_site keeps every site's term on one scale, as LayerDistributedOperator does
        operator = operator + symmetric * (n_out / source.tokens * source.weight)
    return SparseOperator((operator / sum(source.weight for source in found)).tocsr())


def _batches(order: np.ndarray, n_batches: int) -> list[np.ndarray]:
    """Split an epoch's order into ``n_batches`` near-equal minibatches (each sorted: tokens in sample order)."""
    return [np.sort(part) for part in np.array_split(order, n_batches)]


def _resample_batch(x: torch.Tensor, g: sp.csr_matrix | None) -> torch.Tensor:
    """``(B, n_out, K)`` -> ``(B * n_site, K)``: ``G`` applied to every sample."""
    b, n_out, k = x.shape
    if g is None:
        return x.reshape(b * n_out, k)
    site = SparseProduct.apply(x.permute(1, 0, 2).reshape(n_out, b * k), g)  # (n_site, B * K)
    return site.reshape(-1, b, k).permute(1, 0, 2).reshape(-1, k)


class MinibatchOperator:
    """The paper's minibatch schedule over a store, as an operator of the gradient solver.

    Parameters
    ----------
    tree : xarray.DataTree
        The store.
    found : sequence of Source
        The graphs (sites, timesteps).
    n_samples : int
        Samples of the store.
    settings : Settings
        How graphs are built.
    batch_size, steps_per_batch, epochs : int
        The schedule: ``ceil(n_samples / batch_size)`` near-equal minibatches per epoch.
    """

    dtype = torch.float32
    device = torch.device("cpu")
    fixed_schedule = True

    def __init__(self, tree: xr.DataTree, found: Sequence[Source], n_samples: int, settings: Settings, *,
                 batch_size: int, steps_per_batch: int, epochs: int) -> None:
        self.tree, self.sources, self.settings = tree, list(found), settings
        self.num_blocks = n_samples
        self.n_out = settings.grid[0] * settings.grid[1]
        self.size = n_samples * self.n_out
        self.steps_per_batch, self.epochs = steps_per_batch, epochs
        self.n_batches = math.ceil(n_samples / batch_size)
        self.resamplers = [_resampler(source, settings) for source in self.sources]
        self._resamplers32 = [None if g is None else g.astype(np.float32) for g in self.resamplers]
        self._order = torch.arange(n_samples)
        self._walks: list[list[sp.csr_matrix] | None] = []

    def _minibatch_walks(self, batches: Sequence[np.ndarray]) -> list[list[sp.csr_matrix]]:
        """``walks[b][l]``: ``sym(P)`` of site ``l`` over minibatch ``b`` (float32), reading every site once."""
        walks: list[list[sp.csr_matrix]] = [[] for _ in batches]
        for source in self.sources:
            query, key = _read_site(self.tree, source, self.settings.kind, self.num_blocks)
            for b, samples in enumerate(batches):
                index = torch.from_numpy(samples)
                walk = _walk(query[index], key[index], source, self.settings)
                walks[b].append(((walk + walk.T) * 0.5).astype(np.float32).tocsr())
            del query, key
        return walks

    def _terms(self, walks: Sequence[sp.csr_matrix], x: torch.Tensor) -> list[Eq4Term]:
        return [Eq4Term(_resample_batch(x, g), [(SparseGraph(walk).sym_matmul,
                                                 torch.tensor([source.weight], dtype=x.dtype))])
                for g, walk, source in zip(self._resamplers32, walks, self.sources)]

    def eq4_schedule(self, generator: torch.Generator, steps: int | None = None,
                     state: dict[str, Any] | None = None) -> tuple[int, int, Iterator[Eq4Draw]]:
        """``(draws, done, iterator)`` over the remaining minibatches of every epoch (resumable from ``state``)."""
        epoch, next_batch = (0, 0) if state is None else (int(v) for v in state["counters"][:2])
        if state is not None:
            self._order = state["order"].clone()
        total = self.epochs * self.n_batches

        def draws() -> Iterator[Eq4Draw]:
            nonlocal epoch, next_batch
            self._walks = []
            while epoch < self.epochs:
                if next_batch == 0:
                    self._order = torch.randperm(self.num_blocks, generator=generator)
                batches = _batches(self._order.numpy(), self.n_batches)
                if next_batch == 0 or not self._walks:
                    self._walks = [None] * next_batch + list(self._minibatch_walks(batches[next_batch:]))
                samples, walks = batches[next_batch], self._walks[next_batch]
                next_batch += 1
                if next_batch == self.n_batches:
                    epoch, next_batch = epoch + 1, 0
                yield Eq4Draw(
                    samples.tolist(), lambda x, walks=walks: self._terms(walks, x), repeat=self.steps_per_batch,
                    state={"order": self._order.clone(), "counters": torch.tensor([epoch, next_batch])},
                    epoch_end=next_batch == 0,
                )

        return total, min(epoch * self.n_batches + next_batch, total), draws()

    def matmat(self, basis: Any) -> np.ndarray:
        """``M x`` with ``M = sum_b mean_l G_l^T sym(P_bl) G_l`` over the last epoch's minibatches.

        The graphs are rebuilt from the last epoch's order when this run did not build them all.
        """
        batches = _batches(self._order.numpy(), self.n_batches)
        if len(self._walks) != self.n_batches or any(w is None for w in self._walks):
            self._walks = list(self._minibatch_walks(batches))
        basis = np.asarray(basis, dtype=np.float64)
        k = basis.shape[1]
        blocks = basis.reshape(-1, self.n_out, k)
        product = np.zeros_like(blocks)
        total = sum(source.weight for source in self.sources)
        for samples, batch_walks in zip(batches, self._walks):
            for g, walk, source in zip(self.resamplers, batch_walks, self.sources):
                site = blocks[samples] if g is None else np.stack([g @ block for block in blocks[samples]])
                walked = (walk @ site.reshape(-1, k)).reshape(site.shape)
                back = walked if g is None else np.stack([g.T @ block for block in walked])
                product[samples] += back * (source.weight / total)
        return product.reshape(-1, k)

    def dense(self) -> np.ndarray:
        """The last epoch's ``M`` as a dense array (small problems only)."""
        return self.matmat(np.eye(self.size))

    def eq4_objective(self, x: torch.Tensor, ortho_weight: float) -> float:
        """Not tracked over a whole dataset: NaN."""
        return math.nan

    def cache(self, max_bytes: int) -> list[Any]:
        """Nothing to cache: the graphs are sparse."""
        return []

    @staticmethod
    def release(cached: Sequence[Any]) -> None:
        """Nothing cached."""

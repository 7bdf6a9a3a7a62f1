"""The layer-distributed operator ``M`` of one sample over a set of site graphs.

.. math::

    M = \\sum_g \\hat w_g \\, (N / n_g) \\, G_g^T \\, \\mathrm{sym}(P_g) \\, G_g,
    \\qquad \\mathrm{sym}(P) = (P + P^T) / 2,

with ``\\hat w_g`` the graph weights normalised to sum to one, ``N`` the number of
output tokens, ``n_g`` the number of tokens of the graph's site and ``G_g`` the
resampling from the output grid to the site's grid (see
:mod:`interpret_spectral.spectral.site_graphs` for the graphs).  Besides products with
``M`` (for exact solvers), the operator hands the Eq. 4 terms of its graphs to the
gradient solver (:meth:`LayerDistributedOperator.eq4_schedule`): one timestep's graphs
per step, drawn at random when the store has several.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sparse
import torch

from interpret_spectral.spectral.eq4 import Eq4Draw, Eq4Term, eq4_loss
from interpret_spectral.spectral.resample import ResampleMethod, as_grid, check_resample_method, resample_1d
from interpret_spectral.spectral.site_graphs import SiteGraphs, _as_tensor

__all__ = ["LayerDistributedOperator"]


def _symmetrize_(m: torch.Tensor, block: int = 512) -> None:
    """``m <- (m + m^T) / 2`` in place, a block of rows at a time (no second ``n x n`` matrix)."""
    n = m.shape[0]
    for start in range(0, n, block):
        stop = min(start + block, n)
        mean = 0.5 * (m[start:stop, start:] + m[start:, start:stop].T)
        m[start:stop, start:] = mean
        m[start:, start:stop] = mean.T


class LayerDistributedOperator:
    """The matrix ``M = sum_g w_g (N / n_g) G_g^T sym(P_g) G_g`` over a set of site graphs.

    Parameters
    ----------
    graphs : sequence of SiteGraphs
        The graphs (any sites, grids and timesteps); their ``weights`` are normalised
        to sum to one over the whole set.
    out_grid : (int, int) or int
        The output grid of the decomposition.
    resample : {"bilinear", "area"}
        How maps on the output grid are taken to each site's grid (see
        :meth:`resampling_matrix`).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> fine = SiteGraphs.from_tokens("qk", grid=4, q=rng.normal(size=(2, 16, 3)), k=rng.normal(size=(2, 16, 3)), scale=1.0)
    >>> coarse = SiteGraphs.from_tokens("vv", grid=2, v=rng.normal(size=(1, 4, 3)))
    >>> op = LayerDistributedOperator([fine, coarse], out_grid=4)
    >>> m = op.dense()
    >>> bool(np.allclose(m, m.T)), m.shape
    (True, (16, 16))
    """

    def __init__(
        self,
        graphs: Sequence[SiteGraphs],
        out_grid: tuple[int, int] | int,
        resample: ResampleMethod = "bilinear",
    ) -> None:
        if not graphs:
            raise ValueError("the operator needs at least one site graph")
        check_resample_method(resample)
        self.graphs = list(graphs)
        self.out_grid = as_grid(out_grid, "out_grid")
        self.resample_method = resample
        self.dtype = self.graphs[0].dtype
        self.device = self.graphs[0].device
        total = sum(float(g.weights.sum()) for g in self.graphs)
        if not total > 0:
            raise ValueError("graph weights sum to zero: give at least one graph a positive weight")
        self.total_weight = total
        self._factors: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for graph in self.graphs:
            if graph.grid != self.out_grid and graph.grid not in self._factors:
                ry, rx = self._numpy_factors(graph.grid)
                self._factors[graph.grid] = (
                    torch.as_tensor(ry, dtype=torch.float64, device=self.device),
                    torch.as_tensor(rx, dtype=torch.float64, device=self.device),
                )

    def _numpy_factors(self, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        factors = []
        for n_out, n_site in zip(self.out_grid, grid):
            antialias = self.resample_method == "bilinear" and n_out > 2 * n_site
            factors.append(resample_1d(n_out, n_site, self.resample_method, antialias))
        return factors[0], factors[1]

    def resampling_matrix(self, grid: tuple[int, int]) -> sparse.csr_matrix:
        """The ``G`` this operator uses for a site on ``grid`` (``(n_grid, N)``, no norm factor).

        ``"area"``: :func:`resampling_matrix` with ``method="area"``.  ``"bilinear"``:
        :func:`resampling_matrix` with ``method="bilinear"`` on every axis that shrinks
        by at most 2x, and its ``antialias=True`` form on axes that shrink more: plain
        bilinear then reads only 2 of every ``f`` pixels, and the top eigenvectors of
        ``M`` would lock onto those pixels (a map living on them gains a factor ``f^2/4``
        in the term of that site).

        Examples
        --------
        >>> import numpy as np
        >>> g = SiteGraphs.from_tokens("vv", grid=2, v=np.ones((1, 4, 2)))
        >>> LayerDistributedOperator([g], out_grid=8).resampling_matrix((2, 2)).shape
        (4, 64)
        """
        grid = as_grid(grid, "grid")
        ry, rx = self._numpy_factors(grid)
        return sparse.kron(sparse.csr_matrix(ry), sparse.csr_matrix(rx), format="csr")

    @property
    def size(self) -> int:
        """``N``, the number of output tokens."""
        return self.out_grid[0] * self.out_grid[1]

    @property
    def num_graphs(self) -> int:
        """Number of graphs (heads x sites x timesteps)."""
        return sum(g.num_graphs for g in self.graphs)

    def normalized_weights(self, graph: SiteGraphs) -> torch.Tensor:
        """The weights of ``graph``'s graphs divided by the total weight of the operator."""
        return graph.weights.to(self.dtype) / self.total_weight

    def grid_scale(self, grid: tuple[int, int]) -> float:
        """``N / n``: the factor of a graph on ``grid`` in ``M``."""
        return self.size / (grid[0] * grid[1])

    def resample(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``G x`` for ``x`` of shape ``(N, m)``: ``(n_grid, m)`` (no norm factor).

        Differentiable (used by the gradient solver).
        """
        if grid == self.out_grid:
            return x
        ry, rx = self._factors[grid]
        h, w = self.out_grid
        maps = x.reshape(h, w, -1)
        out = torch.einsum("ah,hwm,bw->abm", ry.to(x.dtype), maps, rx.to(x.dtype))
        return out.reshape(grid[0] * grid[1], -1)

    def resample_adjoint(self, z: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``G^T z`` for ``z`` of shape ``(n_grid, m)``: ``(N, m)``."""
        if grid == self.out_grid:
            return z
        ry, rx = self._factors[grid]
        maps = z.reshape(grid[0], grid[1], -1)
        out = torch.einsum("ah,abm,bw->hwm", ry.to(z.dtype), maps, rx.to(z.dtype))
        return out.reshape(self.size, -1)

    def _by_grid(self) -> dict[tuple[int, int], list[SiteGraphs]]:
        groups: dict[tuple[int, int], list[SiteGraphs]] = {}
        for graph in self.graphs:
            groups.setdefault(graph.grid, []).append(graph)
        return groups

    def matmat(self, x: Any) -> torch.Tensor:
        """``M x`` for ``x`` of shape ``(N, m)``, recomputing attention in row chunks.

        Memory is one row chunk per site plus ``O(N m)``, whatever the number of graphs.

        Examples
        --------
        >>> import numpy as np
        >>> g = SiteGraphs.from_tokens("vv", grid=2, v=np.ones((1, 4, 2)))
        >>> op = LayerDistributedOperator([g], out_grid=2)
        >>> op.matmat(np.ones((4, 1))).ravel().tolist()
        [1.0, 1.0, 1.0, 1.0]
        """
        x = _as_tensor(x, self.dtype).to(self.device)
        squeeze = x.ndim == 1
        if squeeze:
            x = x[:, None]
        out = torch.zeros(self.size, x.shape[1], dtype=self.dtype, device=self.device)
        for grid, graphs in self._by_grid().items():
            z = self.resample(x, grid)
            acc = torch.zeros_like(z)
            for graph in graphs:
                acc += graph.weighted_sym_matmul(z, self.normalized_weights(graph))
            out += self.grid_scale(grid) * self.resample_adjoint(acc, grid)
        return out[:, 0] if squeeze else out

    def dense(self) -> np.ndarray:
        """The explicit ``M`` (``(N, N)`` float64 numpy array); see :meth:`dense_tensor`."""
        return self.dense_tensor().cpu().numpy()

    def dense_tensor(self) -> torch.Tensor:
        """The explicit ``M`` as a ``(N, N)`` float64 tensor on the operator's device.

        Rows of every ``P`` are computed in the graphs' dtype and summed in float64.
        Sites on the output grid are summed straight into ``M``; the other sites are
        first summed per grid (``n_grid x n_grid``) and then resampled, so memory is
        ``N^2`` plus the largest other grid squared, whatever the number of graphs.
        """
        n = self.size
        block = 512
        m = torch.zeros(n, n, dtype=torch.float64, device=self.device)
        for grid, graphs in self._by_grid().items():
            summed = m if grid == self.out_grid else None
            for graph in graphs:
                summed = graph.weighted_dense(self.normalized_weights(graph), out=summed)
            if grid == self.out_grid:
                continue
            left_t = self.resample_adjoint(summed, grid).T  # (G^T S)^T: (n_grid, N)
            del summed
            # G^T (G^T S)^T = (G^T S G)^T: the same once symmetrised below; a block of columns
            # at a time, so that no second N x N matrix is held
            for start in range(0, n, block):
                stop = min(start + block, n)
                block_cols = self.resample_adjoint(left_t[:, start:stop].contiguous(), grid)
                m[:, start:stop].add_(block_cols, alpha=self.grid_scale(grid))
            del left_t
        _symmetrize_(m)
        return m

    def rayleigh_quotients(self, x: Any) -> list[torch.Tensor]:
        """Per graph, ``(N / n_g) x_c^T G_g^T sym(P_g) G_g x_c`` for every column ``c`` of ``x``.

        Returns one ``(graphs, columns)`` tensor per entry of ``self.graphs``.  With
        orthonormal ``x`` the weighted sum over graphs is ``diag(x^T M x)``.

        Examples
        --------
        >>> import numpy as np
        >>> g = SiteGraphs.from_tokens("vv", grid=2, v=np.ones((1, 4, 2)))
        >>> op = LayerDistributedOperator([g], out_grid=2)
        >>> op.rayleigh_quotients(np.full((4, 1), 0.5))[0].tolist()
        [[1.0]]
        """
        x = _as_tensor(x, self.dtype).to(self.device)
        results = []
        cache: dict[tuple[int, int], torch.Tensor] = {}
        for graph in self.graphs:
            if graph.grid not in cache:
                cache[graph.grid] = self.resample(x, graph.grid)
            z = cache[graph.grid]
            sz = graph.sym_matmul(z)
            results.append(self.grid_scale(graph.grid) * (sz * z[None]).sum(1))
        return results

    # -- the gradient solver's view ----------------------------------------------------------
    #: Parameter blocks of the maps: one (the sample's own maps).
    num_blocks = 1
    #: Whether the schedule fixes its own number of steps (a dataset's epochs); here the solver's ``steps``.
    fixed_schedule = False

    def _timestep_groups(self) -> tuple[list[Any], dict[Any, list[SiteGraphs]]]:
        groups: dict[Any, list[SiteGraphs]] = {}
        for graph in self.graphs:
            groups.setdefault(graph.timestep, []).append(graph)
        return sorted(groups, key=lambda t: -1 if t is None else t), groups

    def eq4_terms(self, graphs: Sequence[SiteGraphs], x: torch.Tensor) -> list[Eq4Term]:
        """The Eq. 4 terms of ``graphs`` for maps ``x`` (``(1, N, C)`` or ``(N, C)``)."""
        x = x.reshape(self.size, -1)
        by_grid: dict[tuple[int, int], list[SiteGraphs]] = {}
        for graph in graphs:
            by_grid.setdefault(graph.grid, []).append(graph)
        return [
            Eq4Term(self.resample(x, grid), [(graph.sym_matmul, graph.weights) for graph in site_graphs])
            for grid, site_graphs in by_grid.items()
        ]

    def eq4_schedule(self, generator: torch.Generator, steps: int | None = None,
                     state: dict[str, Any] | None = None) -> tuple[int, int, Iterator[Eq4Draw]]:
        """``(draws, done, iterator)``: ``steps`` draws of one timestep's graphs each (drawn at random).

        With several recorded timesteps one is drawn per step (the authors' attention
        buffer, with the store as the buffer).
        """
        if steps is None:
            raise ValueError("the per-image schedule needs the number of steps")
        keys, groups = self._timestep_groups()

        def draws() -> Iterator[Eq4Draw]:
            for _ in range(int(steps)):
                key = keys[int(torch.randint(len(keys), (1,), generator=generator))] if len(keys) > 1 else keys[0]
                yield Eq4Draw([0], lambda x, graphs=groups[key]: self.eq4_terms(graphs, x))

        return int(steps), 0, draws()

    def eq4_objective(self, x: torch.Tensor, ortho_weight: float) -> float:
        """The Eq. 4 loss averaged over the timesteps (the final ``loss`` of a solve)."""
        keys, groups = self._timestep_groups()
        return float(np.mean([float(eq4_loss(self.eq4_terms(groups[k], x), ortho_weight)) for k in keys]))

    def cache(self, max_bytes: int) -> list[SiteGraphs]:
        """Materialise the dense ``sym(P)`` of as many site graphs as fit in ``max_bytes``.

        Returns the graphs cached by this call (release them with :meth:`release`).
        """
        budget = int(max_bytes)
        cached = []
        for graph in self.graphs:
            itemsize = torch.finfo(graph.dtype).bits // 8
            need = graph.num_graphs * graph.num_tokens**2 * itemsize
            if not graph.materialized and graph.materialize(budget):
                cached.append(graph)
                budget -= need
        return cached

    def keep_rows(self, max_bytes: int) -> list[SiteGraphs]:
        """Keep the rows of ``P`` of as many site graphs as fit in ``max_bytes`` (:meth:`SiteGraphs.keep_rows`).

        Returns the graphs whose rows this call kept (forget them with :meth:`drop_rows`).

        Examples
        --------
        >>> import numpy as np
        >>> op = LayerDistributedOperator([SiteGraphs.from_tokens("vv", grid=2, v=np.ones((1, 4, 2)))], out_grid=2)
        >>> kept = op.keep_rows(2**20)
        >>> len(kept), op.drop_rows(kept)
        (1, None)
        """
        budget = int(max_bytes)
        kept = []
        for graph in self.graphs:
            need = graph.num_graphs * graph.num_tokens**2 * (torch.finfo(graph.dtype).bits // 8)
            if not graph.rows_kept and graph.keep_rows(budget):
                kept.append(graph)
                budget -= need
        return kept

    @staticmethod
    def drop_rows(kept: Sequence[SiteGraphs]) -> None:
        """Forget the rows :meth:`keep_rows` kept."""
        for graph in kept:
            graph.drop_rows()

    @staticmethod
    def release(cached: Sequence[SiteGraphs]) -> None:
        """Drop the caches :meth:`cache` made."""
        for graph in cached:
            graph.release()

"""The graphs of one attention site: rows of ``P`` in chunks, products with ``sym(P)``.

The decomposition (paper section 3) works on a set of random-walk matrices ``P_g``,
one per graph ``g`` = (site, head[, timestep]), of a :class:`~interpret_spectral.spectral.kinds.GraphKind`
(``"qk"``: the attention's row softmax; ``"vv"``: cosine of the values; or a registered one).
``heads="each"`` makes every head its own graph (the paper's per-image setting);
``heads="concat"`` concatenates the heads of a site into one vector per token and
makes one graph per site.  For ``"qk"`` the concatenated ``q`` and ``k`` keep the
site's softmax scale, so the logits are the *sum* of the per-head logits.

Each site lives on its own token grid; :class:`LayerDistributedOperator` applies

.. math::

    M = \\sum_g \\hat w_g \\, (N / n_g) \\, G_g^T \\, \\mathrm{sym}(P_g) \\, G_g,
    \\qquad \\mathrm{sym}(P) = (P + P^T) / 2,

with ``\\hat w_g`` the graph weights normalised to sum to one, ``N`` the number of
output tokens, ``n_g`` the number of tokens of the graph's site and ``G_g`` the
resampling of :mod:`interpret_spectral.spectral.resample`.  The factor ``N / n_g``
makes the resampling norm-preserving for smooth maps, so every graph's term is a
Rayleigh quotient on the same scale whatever its grid (the authors' code normalises
the resampled map of every graph to the same end).  Plain bilinear downsampling by
more than 2x reads only 2 of every ``f`` pixels per axis, so the operator uses the
antialiased bilinear filter on such axes (:meth:`LayerDistributedOperator.resampling_matrix`).

``sym(P) Y`` is attention with values ``Y`` (``P Y``) plus the transposed softmax
(``P^T Y``), both computed in row chunks, so that nothing of size ``n x n`` is ever
held beyond one chunk unless asked (:meth:`SiteGraphs.materialize`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from interpret_spectral.spectral.kinds import GraphKind, get_graph_kind
from interpret_spectral.spectral.resample import as_grid
from interpret_spectral.store.format import all_finite

__all__ = ["HEAD_MODES", "NonFiniteError", "SiteGraphs"]

HEAD_MODES: tuple[str, ...] = ("each", "concat")

_DEFAULT_CHUNK_BYTES = 32 * 2**20


class NonFiniteError(ValueError):
    """Attention tokens (or a graph built from them) hold NaN or infinity."""


def _as_tensor(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return tensor.to(dtype) if dtype is not None else tensor


class SiteGraphs:
    """The graphs of one attention site (at one timestep), heads stacked.

    Build with :meth:`from_tokens`.  Holds the tensors ``(graphs, tokens, channels)``
    its kind prepared (scaled ``q`` and ``k`` for ``"qk"``, unit ``v`` for ``"vv"``) and
    computes rows of ``P`` on demand, ``chunk_bytes`` at a time, unless
    :meth:`materialize` cached them.

    Attributes
    ----------
    name : str
        The site's name.
    grid : (int, int)
        The site's token grid.
    kind : GraphKind
    weights : torch.Tensor
        ``(graphs,)`` non-negative weights (not normalised).
    timestep : int or None
        Position of the timestep the graphs belong to (None without timesteps).
    """

    def __init__(
        self,
        kind: GraphKind,
        tensors: tuple[torch.Tensor, ...],
        grid: tuple[int, int],
        weights: torch.Tensor,
        *,
        scale: float = 1.0,
        name: str = "",
        timestep: int | None = None,
        chunk_bytes: int = _DEFAULT_CHUNK_BYTES,
    ) -> None:
        self.kind = kind
        self.tensors = tensors
        self.grid = grid
        self.weights = weights
        self.scale = float(scale)
        self.name = name
        self.timestep = timestep
        self.chunk_bytes = int(chunk_bytes)
        self._cache: torch.Tensor | None = None
        self._kept: torch.Tensor | None = None
        self._degree: torch.Tensor | None = None

    @classmethod
    def from_tokens(
        cls,
        kind: str | GraphKind,
        *,
        grid: tuple[int, int] | int,
        q: Any = None,
        k: Any = None,
        v: Any = None,
        tokens: dict[str, Any] | None = None,
        scale: float | None = None,
        heads: HeadMode = "each",
        weights: Any = None,
        name: str = "",
        timestep: int | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
        chunk_bytes: int = _DEFAULT_CHUNK_BYTES,
    ) -> SiteGraphs:
        """Graphs of one site from its patch tokens.

        Parameters
        ----------
        kind : str or GraphKind
            The graph kind (a registered name or an object).
        grid : (int, int) or int
            The site's token grid; tokens are in row-major grid order.
        q, k, v : array-like
            ``(head, token, channel)`` patch tokens (those of ``kind.variables``).
        tokens : dict, optional
            Other variables by name, for kinds that read them.
        scale : float, optional
            Softmax scale (required for ``"qk"``).
        heads : {"each", "concat"}
            One graph per head, or one graph of the concatenated heads.
        weights : float or sequence of float, optional
            Weight of every graph of the site (one number), or one per head
            (``heads="each"`` only).  Default 1.
        name : str
            The site's name.
        timestep : int, optional
            Position of the graphs' timestep.
        dtype : torch.dtype
            Computation dtype.
        device : str or torch.device, optional
            Torch device for the computation.
        chunk_bytes : int
            Memory for one row chunk of ``P`` over all graphs of the site.

        Returns
        -------
        SiteGraphs

        Examples
        --------
        >>> import numpy as np
        >>> q = np.random.default_rng(0).normal(size=(2, 4, 3))
        >>> graphs = SiteGraphs.from_tokens("qk", grid=(2, 2), q=q, k=q, scale=0.5)
        >>> graphs.num_graphs, graphs.dense().shape
        (2, torch.Size([2, 4, 4]))
        """
        kind = get_graph_kind(kind)
        if heads not in HEAD_MODES:
            raise ValueError(f"heads must be one of {HEAD_MODES}, got {heads!r}")
        grid = as_grid(grid, "grid")
        given = {"q": q, "k": k, "v": v, **(tokens or {})}
        arrays = {}
        for var in kind.variables:
            if given.get(var) is None:
                raise ValueError(f"the {kind.name!r} graph of site {name!r} needs {var!r}")
            tensor = _as_tensor(given[var], dtype).to(device)
            if tensor.ndim != 3:
                raise ValueError(f"{var} of site {name!r} must be (head, token, channel), got shape {tuple(tensor.shape)}")
            if tensor.shape[1] != grid[0] * grid[1]:
                raise ValueError(
                    f"{var} of site {name!r} has {tensor.shape[1]} tokens, but the grid {grid} holds "
                    f"{grid[0] * grid[1]}: pass patch tokens only, in row-major grid order"
                )
            if not all_finite(tensor):
                raise NonFiniteError(
                    f"{var} of site {name!r} holds NaN or infinity: the model produced non-finite attention "
                    "for this input; re-probe it (check its inputs and precision) or leave the site out (layers=)"
                )
            arrays[var] = tensor
        shapes = {var: tuple(a.shape) for var, a in arrays.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"the variables of site {name!r} differ in shape: {shapes}")
        num_heads = next(iter(arrays.values())).shape[0]
        if heads == "concat":
            arrays = {var: a.transpose(0, 1).reshape(1, a.shape[1], -1) for var, a in arrays.items()}
        tensors = kind.prepare(arrays, scale)
        num_graphs = tensors[0].shape[0]
        w = torch.ones(num_graphs, dtype=dtype, device=device) if weights is None else _as_tensor(weights, dtype).to(device)
        if w.ndim == 0:
            w = w.expand(num_graphs).clone()
        if w.shape != (num_graphs,):
            raise ValueError(
                f"weights of site {name!r} must be one number or one per graph ({num_graphs}: "
                f"{num_heads} heads, heads={heads!r}), got shape {tuple(w.shape)}"
            )
        if not bool(torch.all(w >= 0)) or not bool(torch.all(torch.isfinite(w))):
            raise ValueError(f"weights of site {name!r} must be finite and non-negative, got {w.tolist()}")
        return cls(kind, tensors, grid, w, scale=1.0 if scale is None else scale, name=name,
                   timestep=timestep, chunk_bytes=chunk_bytes)

    # -- shape --------------------------------------------------------------------------
    @property
    def num_graphs(self) -> int:
        """Number of graphs (heads, or 1 with ``heads="concat"``)."""
        return int(self.tensors[0].shape[0])

    @property
    def num_tokens(self) -> int:
        """Number of patch tokens ``n``."""
        return int(self.tensors[0].shape[1])

    @property
    def dtype(self) -> torch.dtype:
        """Computation dtype."""
        return self.tensors[0].dtype

    @property
    def device(self) -> torch.device:
        """Computation device."""
        return self.tensors[0].device

    # -- rows of P ----------------------------------------------------------------------
    def _rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of every graph's ``P``: ``(graphs, stop - start, n)``."""
        if self._kept is not None:
            return self._kept[:, start:stop]
        rows = self.kind.affinity_rows(self.tensors, start, stop)
        if (self._degree is None and not self.kind.stochastic_rows and start == 0 and stop == self.num_tokens
                and type(self.kind).degree is GraphKind.degree):
            # one chunk holds every row: the degree is its row sums (what GraphKind.degree would recompute)
            self._degree = rows.sum(-1)
        degree = self.degree()
        return rows if degree is None else rows / degree[:, start:stop, None]

    def degree(self) -> torch.Tensor | None:
        """Row sums of the affinity (``(graphs, n)``), computed once; None when rows are stochastic."""
        if self.kind.stochastic_rows:
            return None
        if self._degree is None:
            self._degree = self.kind.degree(self.tensors, self._chunks())
        return self._degree

    def _chunks(self) -> Iterator[tuple[int, int]]:
        n = self.num_tokens
        itemsize = torch.finfo(self.dtype).bits // 8
        rows = max(1, self.chunk_bytes // max(1, self.num_graphs * n * itemsize))
        for start in range(0, n, rows):
            yield start, min(start + rows, n)

    def materialize(self, max_bytes: int) -> bool:
        """Cache the dense ``sym(P)`` of every graph when it takes at most ``max_bytes``.

        Returns whether the cache is in place.  Products with ``sym(P)``
        (:meth:`sym_matmul`, :meth:`weighted_sym_matmul`; the gradient solver repeats
        them every step) then read the cache instead of recomputing the softmax.

        Examples
        --------
        >>> import numpy as np
        >>> g = SiteGraphs.from_tokens("vv", grid=2, v=np.ones((1, 4, 2)))
        >>> g.materialize(2**20)
        True
        """
        if self._cache is not None:
            return True
        itemsize = torch.finfo(self.dtype).bits // 8
        if self.num_graphs * self.num_tokens**2 * itemsize > max_bytes:
            return False
        p = self.dense()
        self._cache = p.add_(p.transpose(1, 2).clone()).mul_(0.5)
        return True

    def keep_rows(self, max_bytes: int) -> bool:
        """Keep every graph's ``P`` in memory, when it takes at most ``max_bytes``, until :meth:`drop_rows`.

        Every later use of the rows (``M``'s dense sum, products, Rayleigh quotients)
        reads them instead of recomputing the attention, with the very same values
        and chunks, so results are bitwise those without it.  Returns whether the
        rows are kept.

        Examples
        --------
        >>> import numpy as np
        >>> g = SiteGraphs.from_tokens("vv", grid=2, v=np.ones((1, 4, 2)))
        >>> g.keep_rows(2**20), g.keep_rows(2**20), g.drop_rows(), g.rows_kept
        (True, True, None, False)
        """
        if self._kept is not None:
            return True
        itemsize = torch.finfo(self.dtype).bits // 8
        if self.num_graphs * self.num_tokens**2 * itemsize > max_bytes:
            return False
        self._kept = self.dense()
        return True

    @property
    def rows_kept(self) -> bool:
        """Whether :meth:`keep_rows` holds the rows of ``P``."""
        return self._kept is not None

    def drop_rows(self) -> None:
        """Forget the rows :meth:`keep_rows` kept.

        Examples
        --------
        >>> import numpy as np
        >>> SiteGraphs.from_tokens("vv", grid=2, v=np.ones((1, 4, 2))).drop_rows()
        """
        self._kept = None

    def release(self) -> None:
        """Drop the cache of :meth:`materialize`.

        Examples
        --------
        >>> import numpy as np
        >>> g = SiteGraphs.from_tokens("vv", grid=2, v=np.ones((1, 4, 2)))
        >>> g.materialize(2**20), g.release(), g.materialized
        (True, None, False)
        """
        self._cache = None

    @property
    def materialized(self) -> bool:
        """Whether the dense ``sym(P)`` is cached."""
        return self._cache is not None

    def dense(self) -> torch.Tensor:
        """Every graph's ``P`` as a dense ``(graphs, n, n)`` tensor.

        Examples
        --------
        >>> import numpy as np
        >>> g = SiteGraphs.from_tokens("vv", grid=(1, 2), v=np.eye(2)[None])
        >>> g.dense().tolist()
        [[[1.0, 0.0], [0.0, 1.0]]]
        """
        return torch.cat([self._rows(start, stop) for start, stop in self._chunks()], dim=1)

    # -- products -----------------------------------------------------------------------
    def sym_matmul(self, y: torch.Tensor) -> torch.Tensor:
        """``sym(P_g) y`` for every graph ``g``: ``(graphs, n, m)`` from ``y`` of shape ``(n, m)``.

        ``P y`` is attention with values ``y``; ``P^T y`` accumulates the transposed
        row chunks, so memory stays at one chunk.

        Examples
        --------
        >>> import numpy as np
        >>> g = SiteGraphs.from_tokens("vv", grid=(1, 2), v=np.eye(2)[None])
        >>> g.sym_matmul(torch.ones(2, 1, dtype=torch.float64)).tolist()
        [[[1.0], [1.0]]]
        """
        y = y.to(self.dtype)
        if self._cache is not None:
            return self._cache @ y
        out = torch.zeros(self.num_graphs, *y.shape, dtype=self.dtype, device=self.device)
        for start, stop in self._chunks():
            rows = self._rows(start, stop)
            out[:, start:stop] += rows @ y
            out += rows.transpose(1, 2) @ y[start:stop]
        return out.mul_(0.5)

    def weighted_sym_matmul(self, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_g weights_g sym(P_g) y``: ``(n, m)`` from ``y`` of shape ``(n, m)``.

        Examples
        --------
        >>> import numpy as np
        >>> g = SiteGraphs.from_tokens("vv", grid=(1, 2), v=np.ones((2, 2, 1)))
        >>> w = torch.tensor([0.25, 0.25], dtype=torch.float64)
        >>> g.weighted_sym_matmul(torch.ones(2, 1, dtype=torch.float64), w).tolist()
        [[0.5], [0.5]]
        """
        y = y.to(self.dtype)
        w = weights.to(self.dtype)
        if self._cache is not None:
            return torch.einsum("g,gij->ij", w, self._cache) @ y
        out = torch.zeros(*y.shape, dtype=self.dtype, device=self.device)
        for start, stop in self._chunks():
            rows = torch.einsum("g,gij->ij", w, self._rows(start, stop))
            out[start:stop] += rows @ y
            out += rows.T @ y[start:stop]
        return out.mul_(0.5)

    def weighted_dense(self, weights: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_g weights_g P_g`` as a dense ``(n, n)`` float64 tensor (not symmetrised).

        Rows of ``P`` are computed in the graphs' dtype and accumulated in float64; with
        ``out`` (float64, ``(n, n)``) the sum is added into it and ``out`` is returned.

        Examples
        --------
        >>> import numpy as np
        >>> g = SiteGraphs.from_tokens("vv", grid=(1, 2), v=np.eye(2)[None])
        >>> g.weighted_dense(torch.ones(1, dtype=torch.float64)).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
        """
        n = self.num_tokens
        w = weights.to(self.dtype)
        if out is None:
            out = torch.zeros(n, n, dtype=torch.float64, device=self.device)
        for start, stop in self._chunks():
            out[start:stop] += torch.einsum("g,gij->ij", w, self._rows(start, stop))
        return out

"""Affinity graphs over patch tokens, resampling between token grids, and the operator ``M``.

The layer-distributed spectral decomposition (``DESIGN.md``, "Spectral analysis")
works on a set of random-walk matrices ``P_g``, one per graph ``g`` = (site, head
[, timestep]):

- ``"qk"``: ``P = D^-1 exp(Q K^T * scale)``, the row softmax of the attention logits
  (computed stably: the row maximum is subtracted before ``exp``);
- ``"vv"``: ``P = D^-1 A`` with ``A = max(V_n V_n^T, 0)``, the cosine similarity of the
  unit-normalised values with negatives set to zero.

``heads="each"`` makes every head its own graph (the paper's per-image setting);
``heads="concat"`` concatenates the heads of a site into one vector per token and
makes one graph per site.  For ``"qk"`` the concatenated ``q`` and ``k`` keep the
site's softmax scale, so the logits are the *sum* of the per-head logits and the
concat graph is the row-normalised product of the per-head attention kernels.

Each site lives on its own token grid; :func:`resampling_matrix` gives ``G_l`` that
takes a map on the output grid to the site's grid (``"bilinear"``: the paper;
``"area"``: the authors' code).  :class:`LayerDistributedOperator` applies

.. math::

    M = \\sum_g \\hat w_g \\, (N / n_g) \\, G_g^T \\, \\mathrm{sym}(P_g) \\, G_g,
    \\qquad \\mathrm{sym}(P) = (P + P^T) / 2,

with ``\\hat w_g`` the graph weights normalised to sum to one (all equal unless
``weights=`` says otherwise), ``N`` the number of output tokens and ``n_g`` the number
of tokens of the graph's site.  The factor ``N / n_g`` makes the resampling
norm-preserving for smooth maps (``||sqrt(N/n_g) G_g x|| = ||x||`` for a constant
``x``), so every graph's term is a Rayleigh quotient on the same scale whatever its
grid; the authors' code reaches the same end by normalising the resampled map of
every graph.  Without it a 16x16 site would weigh 16 times less than a 64x64 site.
Plain bilinear downsampling by more than 2x reads only 2 of every ``f`` pixels per
axis, so ``sqrt(N/n_g) G_g`` would amplify maps living on those pixels (by ``f/2``) and
the top eigenvectors of ``M`` would lock onto them; the operator therefore uses the
antialiased bilinear filter on such axes
(:meth:`LayerDistributedOperator.resampling_matrix`).

``sym(P) Y`` is attention with values ``Y`` (``P Y``) plus the transposed softmax
(``P^T Y``), both computed in row chunks, so that nothing of size ``n x n`` is ever
held beyond one chunk unless asked (:meth:`SiteGraphs.materialize`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import scipy.sparse as sparse
import torch

__all__ = [
    "GRAPHS",
    "HEAD_MODES",
    "RESAMPLE_METHODS",
    "resampling_matrix",
    "resampling_factors",
    "qk_affinity",
    "vv_affinity",
    "SiteGraphs",
    "LayerDistributedOperator",
]

GraphKind = Literal["qk", "vv"]
HeadMode = Literal["each", "concat"]
ResampleMethod = Literal["bilinear", "area"]
GRAPHS: tuple[str, ...] = ("qk", "vv")
HEAD_MODES: tuple[str, ...] = ("each", "concat")
RESAMPLE_METHODS: tuple[str, ...] = ("bilinear", "area")

_DEFAULT_CHUNK_BYTES = 32 * 2**20


def _grid(value: Any, what: str) -> tuple[int, int]:
    """``(h, w)`` from an int or a pair of positive ints, or a clear error."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be an int or a (height, width) pair of ints, got {value!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive, got {(h, w)}")
    return h, w


def _check_method(method: str) -> None:
    if method not in RESAMPLE_METHODS:
        raise ValueError(f"resampling method must be one of {RESAMPLE_METHODS}, got {method!r}")


def _resample_1d(n_in: int, n_out: int, method: str, antialias: bool = False) -> np.ndarray:
    """The ``(n_out, n_in)`` matrix of 1-D resampling as ``torch.nn.functional.interpolate`` does it.

    ``"bilinear"``: linear interpolation with ``align_corners=False`` (source coordinate
    ``(i + 0.5) * n_in / n_out - 0.5``, clamped at 0); with ``antialias`` and
    ``n_in > n_out`` a triangle filter whose support grows with the factor (torch's
    ``antialias=True``).  ``"area"``: adaptive average pooling (output ``i`` averages
    inputs ``floor(i n_in / n_out)`` to ``ceil((i + 1) n_in / n_out) - 1``), also when
    upsampling.
    """
    matrix = np.zeros((n_out, n_in))
    scale = n_in / n_out
    if method == "area":
        for i in range(n_out):
            start = (i * n_in) // n_out
            stop = -((-(i + 1) * n_in) // n_out)
            matrix[i, start:stop] = 1.0 / (stop - start)
    elif antialias and scale > 1:
        for i in range(n_out):
            center = scale * (i + 0.5)
            start = max(int(center - scale + 0.5), 0)
            stop = min(int(center + scale + 0.5), n_in)
            taps = np.arange(start, stop)
            weights = np.clip(1.0 - np.abs((taps - center + 0.5) / scale), 0.0, None)
            matrix[i, start:stop] = weights / weights.sum()
    else:
        for i in range(n_out):
            src = max(scale * (i + 0.5) - 0.5, 0.0)
            i0 = min(int(src), n_in - 1)
            i1 = i0 + 1 if i0 < n_in - 1 else i0
            frac = src - i0
            matrix[i, i0] += 1.0 - frac
            matrix[i, i1] += frac
    return matrix


def resampling_factors(
    out_grid: tuple[int, int] | int,
    site_grid: tuple[int, int] | int,
    method: ResampleMethod = "bilinear",
    antialias: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The separable factors ``(R_y, R_x)`` of :func:`resampling_matrix` (same arguments).

    ``G = kron(R_y, R_x)``: ``R_y`` is ``(site_h, out_h)`` and ``R_x`` is
    ``(site_w, out_w)``, so a map ``X`` of shape ``(out_h, out_w)`` resamples to
    ``R_y @ X @ R_x.T``.

    Examples
    --------
    >>> ry, rx = resampling_factors((4, 4), (2, 2), "area")
    >>> ry.tolist()
    [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]
    """
    _check_method(method)
    if antialias and method != "bilinear":
        raise ValueError("antialias applies to method='bilinear' only (as in torch.nn.functional.interpolate)")
    out_h, out_w = _grid(out_grid, "out_grid")
    site_h, site_w = _grid(site_grid, "site_grid")
    return _resample_1d(out_h, site_h, method, antialias), _resample_1d(out_w, site_w, method, antialias)


def resampling_matrix(
    out_grid: tuple[int, int] | int,
    site_grid: tuple[int, int] | int,
    method: ResampleMethod = "bilinear",
    antialias: bool = False,
) -> sparse.csr_matrix:
    """The sparse matrix ``G`` with ``x_site = G @ x_out`` for row-major flattened maps.

    Parameters
    ----------
    out_grid : (int, int) or int
        Grid ``(h, w)`` of the map being resampled (the decomposition's output grid).
    site_grid : (int, int) or int
        Grid of the attention site the map is taken to.
    method : {"bilinear", "area"}
        ``"bilinear"`` equals ``F.interpolate(x, site_grid, mode="bilinear",
        align_corners=False)`` (no antialiasing, also when downsampling: the paper);
        ``"area"`` equals ``F.interpolate(x, site_grid, mode="area")``, i.e. adaptive
        average pooling, also when upsampling (the authors' code).
    antialias : bool
        ``"bilinear"`` only: ``F.interpolate(..., antialias=True)``, a triangle filter
        as wide as the downsampling factor (no change when upsampling).

    Returns
    -------
    scipy.sparse.csr_matrix
        Shape ``(site_h * site_w, out_h * out_w)``.

    Examples
    --------
    >>> import numpy as np
    >>> g = resampling_matrix((4, 4), (2, 2), "area")
    >>> (g @ np.arange(16.0)).tolist()
    [2.5, 4.5, 10.5, 12.5]
    """
    ry, rx = resampling_factors(out_grid, site_grid, method, antialias)
    return sparse.kron(sparse.csr_matrix(ry), sparse.csr_matrix(rx), format="csr")


def _as_tensor(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return tensor.to(dtype) if dtype is not None else tensor


def _like_input(result: torch.Tensor, reference: Any) -> Any:
    return result if isinstance(reference, torch.Tensor) else result.cpu().numpy()


def qk_affinity(q: Any, k: Any, scale: float) -> Any:
    """Dense Q-K random-walk matrices ``P = softmax(q k^T * scale)`` (row softmax).

    Parameters
    ----------
    q, k : array-like or torch.Tensor
        ``(..., n, d)`` queries and keys (e.g. ``(head, token, channel)``).
    scale : float
        The softmax scale of the site.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``(..., n, n)`` row-stochastic matrices, of the type of ``q``.

    Examples
    --------
    >>> import numpy as np
    >>> p = qk_affinity(np.eye(3), np.eye(3), 10.0)
    >>> p.sum(-1).round(6).tolist()
    [1.0, 1.0, 1.0]
    """
    qt = _as_tensor(q)
    qt = qt.to(torch.promote_types(qt.dtype, torch.float32))
    kt = _as_tensor(k, qt.dtype)
    if qt.shape != kt.shape:
        raise ValueError(f"q and k must have the same shape, got {tuple(qt.shape)} and {tuple(kt.shape)}")
    logits = (qt * float(scale)) @ kt.transpose(-1, -2)
    return _like_input(torch.softmax(logits, dim=-1), q)


def vv_affinity(v: Any) -> Any:
    """Dense V-V random-walk matrices: cosine similarity, negatives set to 0, rows normalised.

    Parameters
    ----------
    v : array-like or torch.Tensor
        ``(..., n, d)`` values.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``(..., n, n)`` row-stochastic matrices, of the type of ``v``.

    Examples
    --------
    >>> import numpy as np
    >>> vv_affinity(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])).tolist()
    [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    """
    vt = _as_tensor(v)
    vt = vt.to(torch.promote_types(vt.dtype, torch.float32))
    unit = torch.nn.functional.normalize(vt, dim=-1)
    affinity = (unit @ unit.transpose(-1, -2)).clamp_min_(0.0)
    # cos(v, v) = 1; setting the diagonal also keeps a token with a zero value vector a fixed point.
    affinity.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return _like_input(affinity / affinity.sum(-1, keepdim=True), v)


class SiteGraphs:
    """The graphs of one attention site (at one timestep), heads stacked.

    Build with :meth:`from_tokens`.  Holds ``q``/``k`` (``"qk"``) or unit-normalised
    ``v`` (``"vv"``) as tensors ``(graphs, tokens, channels)`` and computes rows of
    ``P`` on demand, ``chunk_bytes`` at a time, unless :meth:`materialize` cached them.

    Attributes
    ----------
    name : str
        The site's name.
    grid : (int, int)
        The site's token grid.
    kind : {"qk", "vv"}
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
        self._degree: torch.Tensor | None = None

    @classmethod
    def from_tokens(
        cls,
        kind: GraphKind,
        *,
        grid: tuple[int, int] | int,
        q: Any = None,
        k: Any = None,
        v: Any = None,
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
        kind : {"qk", "vv"}
            The affinity (see the module docstring).
        grid : (int, int) or int
            The site's token grid; tokens are in row-major grid order.
        q, k, v : array-like
            ``(head, token, channel)`` patch tokens (``q`` and ``k`` for ``"qk"``,
            ``v`` for ``"vv"``).
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
        if kind not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, got {kind!r}")
        if heads not in HEAD_MODES:
            raise ValueError(f"heads must be one of {HEAD_MODES}, got {heads!r}")
        grid = _grid(grid, "grid")
        names = ("q", "k") if kind == "qk" else ("v",)
        given = {"q": q, "k": k, "v": v}
        arrays = []
        for var in names:
            if given[var] is None:
                raise ValueError(f"the {kind!r} graph of site {name!r} needs {var!r}")
            tensor = _as_tensor(given[var], dtype).to(device)
            if tensor.ndim != 3:
                raise ValueError(f"{var} of site {name!r} must be (head, token, channel), got shape {tuple(tensor.shape)}")
            if tensor.shape[1] != grid[0] * grid[1]:
                raise ValueError(
                    f"{var} of site {name!r} has {tensor.shape[1]} tokens, but the grid {grid} holds "
                    f"{grid[0] * grid[1]}: pass patch tokens only, in row-major grid order"
                )
            arrays.append(tensor)
        if kind == "qk" and arrays[0].shape != arrays[1].shape:
            raise ValueError(f"q and k of site {name!r} differ in shape: {tuple(arrays[0].shape)} vs {tuple(arrays[1].shape)}")
        num_heads = arrays[0].shape[0]
        if heads == "concat":
            arrays = [a.transpose(0, 1).reshape(1, a.shape[1], -1) for a in arrays]
        if kind == "qk":
            if scale is None:
                raise ValueError(f"the 'qk' graph of site {name!r} needs the softmax scale")
            tensors = (arrays[0] * float(scale), arrays[1])
        else:
            tensors = (torch.nn.functional.normalize(arrays[0], dim=-1),)
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
        if self.kind == "qk":
            q, k = self.tensors
            return torch.softmax(q[:, start:stop] @ k.transpose(1, 2), dim=-1)
        return self._affinity_rows(start, stop) / self.degree()[:, start:stop, None]

    def _affinity_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows of the V-V affinity ``A``: cosine clamped at 0, diagonal 1 (also for zero vectors)."""
        (unit,) = self.tensors
        affinity = (unit[:, start:stop] @ unit.transpose(1, 2)).clamp_min_(0.0)
        rows = torch.arange(start, stop, device=unit.device)
        affinity[:, rows - start, rows] = 1.0
        return affinity

    def degree(self) -> torch.Tensor:
        """Row sums of the V-V affinity ``A`` (``(graphs, n)``, ``"vv"`` only), computed once."""
        if self.kind != "vv":
            raise ValueError("degree() is defined for 'vv' graphs; 'qk' rows are softmax-normalised")
        if self._degree is None:
            parts = [self._affinity_rows(start, stop).sum(-1) for start, stop in self._chunks()]
            self._degree = torch.cat(parts, dim=1)
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
        _check_method(resample)
        self.graphs = list(graphs)
        self.out_grid = _grid(out_grid, "out_grid")
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
            factors.append(_resample_1d(n_out, n_site, self.resample_method, antialias))
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
        grid = _grid(grid, "grid")
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
        """The explicit ``M`` (``(N, N)`` float64 numpy array).

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
        return m.cpu().numpy()

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

"""Solvers of the layer-distributed decomposition: the registry, the exact solver, the common finish.

A solver is one :class:`Solver` object used by the per-image
:func:`~interpret_spectral.decompose` and the dataset-level
:func:`~interpret_spectral.decompose_dataset` alike.  It solves ``max tr(X^T M X)``
subject to ``X^T X = I`` (top ``n_components`` eigenvectors of ``M``) for an
*operator*: anything with

- ``size`` (``N``, the rows of ``X``), ``dtype`` and ``device``;
- ``matmat(x)``: ``M x`` for ``x`` of shape ``(N, m)`` (numpy in, numpy or torch out);
- ``dense()``: the explicit ``M`` as a numpy array (small problems);
- optionally ``sparse()``: ``M`` as a scipy sparse matrix (the dataset level's full graph);
- for gradient solvers, the Eq. 4 schedule of :mod:`interpret_spectral.spectral.eq4`
  (``num_blocks``, ``eq4_schedule``, ``eq4_objective``, ``cache``/``release``).

:class:`~interpret_spectral.spectral.operator.LayerDistributedOperator` (one image) and
:class:`~interpret_spectral.spectral.dataset_graphs.SparseOperator` /
:class:`~interpret_spectral.spectral.dataset_graphs.MinibatchOperator` (a dataset)
are such operators.  Built-in solvers: ``"exact"`` (here) and ``"adam"``
(:mod:`interpret_spectral.spectral.adam`, the paper's Eq. 4).  New solvers subclass
:class:`Solver` and are registered with :func:`register_solver` or the entry-point
group ``interpret_spectral.solvers``; a solver with ``minibatch = True`` gets the
dataset level's minibatch Eq. 4 schedule, any other its full sparse graph.

``"exact"`` computes the top eigenvectors directly:

- ``method="eigh"``: the explicit ``M`` (``N x N``) and LAPACK's ``eigh`` restricted to
  the top eigenpairs; the fastest for small ``N`` (the default up to
  :data:`DENSE_THRESHOLD` tokens, e.g. DINOv2 at 224 px = 256 tokens);
- ``method="torch"``: the explicit ``M`` formed on the operator's device and
  ``torch.linalg.eigh`` there (cuSOLVER on a GPU): the default for an operator on a
  GPU (``decompose(..., device="cuda")``) whose ``M`` fits in ``max_dense_bytes``, so
  that graphs and solve stay on the device and only ``N x n_components`` comes back;
- ``method="lanczos"``: ARPACK (``scipy.sparse.linalg.eigsh``) on the explicit ``M``
  (e.g. DINOv2 at 448 px = 1024 tokens, Stable Diffusion at 64x64 = 4096 tokens) while
  it fits in ``max_dense_bytes``, or on the sparse ``M`` of a dataset;
- ``method="lobpcg"``: matrix-free: ``M`` is never formed, every product ``M Y``
  recomputes attention row chunk by row chunk, so memory is ``O(N m)`` plus one chunk.

``M``'s top eigenvector is near-constant (every ``P`` is row-stochastic, so
``P 1 = 1``).  It is kept, as in the authors' code, which clusters on all of its
``num_of_eig`` components.

Every result goes through the same finish (:func:`finish`): orthogonalisation (Eq. 8,
:func:`orthogonalize`), a Rayleigh-Ritz rotation inside the span (so that the columns
are the best approximations of ``M``'s eigenvectors in that span, ordered by their
Rayleigh quotients; for ``"exact"`` the eigenvectors themselves) and the deterministic
sign of :func:`fix_signs`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import torch

from interpret_spectral.spectral.threads import single_thread
from interpret_spectral.spectral.finish import apply_numpy, check_components, finish
from interpret_spectral.spectral.registry import Registry

__all__ = [
    "EXACT_METHODS",
    "DENSE_THRESHOLD",
    "ENTRY_POINT_GROUP",
    "Solution",
    "Solver",
    "ExactSolver",
    "register_solver",
    "get_solver",
    "available_solvers",
    "solve",
    "solve_exact",
]

ENTRY_POINT_GROUP = "interpret_spectral.solvers"
EXACT_METHODS: tuple[str, ...] = ("auto", "eigh", "torch", "lanczos", "lobpcg")

#: Largest number of output tokens for which ``method="auto"`` uses LAPACK ``eigh``
#: (measured on 2 busy cores, 10 components: at 576 tokens single-threaded eigh takes
#: 0.12 s and ARPACK 0.05-0.2 s; at 1024 tokens eigh 0.33 s and ARPACK 0.05 s on
#: DINOv2-S/14 attention, up to 1.1 s on a random matrix; at 4096 tokens eigh 4-20 s
#: and ARPACK about 1 s).
DENSE_THRESHOLD = 800

#: Default memory bound of the explicit ``M`` (float64) before ``"auto"`` goes matrix-free.
MAX_DENSE_BYTES = 2**30


@dataclasses.dataclass
class Solution:
    """The result of one solve.

    Attributes
    ----------
    vectors : numpy.ndarray
        ``(N, n_components)`` float64, orthogonal columns (orthonormal unless the solver
        kept Eq. 8's rotation without whitening).
    values : numpy.ndarray
        ``(n_components,)`` Rayleigh quotients of the unit columns under ``M``.
    iterations : int
        ``"exact"``: products with ``M`` (1 for ``eigh``: ``M`` built once);
        ``"adam"``: loss evaluations (steps).
    seconds : float
        Wall time of the solve.
    method : str
        ``"eigh"``, ``"lanczos"``, ``"lobpcg"``, ``"adam"``, or a plugin's name.
    loss : float
        The final Eq. 4 loss (gradient solvers; NaN otherwise).
    options : dict
        The options the solver ran with, defaults filled in.
    """

    vectors: np.ndarray
    values: np.ndarray
    iterations: int
    seconds: float
    method: str
    loss: float
    options: dict[str, Any]

    @property
    def objective(self) -> float:
        """``tr(X^T M X)`` over the unit columns, the sum of ``values``."""
        return float(np.sum(self.values))


class Solver(abc.ABC):
    """A solver of the decomposition, registered by ``name``.

    Attributes
    ----------
    name : str
        The registry name (``solver="..."``).
    minibatch : bool
        True for solvers of the Eq. 4 schedule: the dataset level then hands them its
        minibatch graphs (:class:`~interpret_spectral.spectral.dataset_graphs.MinibatchOperator`)
        instead of the full sparse graph.
    """

    name: str = ""
    minibatch: bool = False

    @abc.abstractmethod
    def solve(self, operator: Any, n_components: int, *, seed: int = 0, **options: Any) -> Solution:
        """Solve for ``operator`` (see the module docstring) and return a :class:`Solution`."""

    def memory_bytes(self, size: int, n_components: int, **options: Any) -> int:
        """Bytes the solve will take beyond the operator, for checks before allocating (an estimate)."""
        return 8 * size * n_components * 8

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def solve_exact(
    operator: Any,
    n_components: int,
    *,
    method: str = "auto",
    seed: int = 0,
    tol: float | None = None,
    maxiter: int | None = None,
    dense_threshold: int = DENSE_THRESHOLD,
    max_dense_bytes: int = MAX_DENSE_BYTES,
) -> Solution:
    """Top eigenvectors of ``M``.

    Parameters
    ----------
    operator : LayerDistributedOperator or SparseOperator
        Anything with ``size``, ``matmat`` and ``dense()`` (see the module docstring).
    n_components : int
        Number of eigenvectors.
    method : {"auto", "eigh", "torch", "lanczos", "lobpcg"}
        See the module docstring.  ``"auto"``: ``"lanczos"`` on the sparse ``M`` of an
        operator that has one (``operator.sparse()``, the dataset level); ``"torch"``
        for an operator on a GPU while ``M`` takes at most ``max_dense_bytes``;
        otherwise ``"eigh"`` up to ``dense_threshold`` tokens, ``"lanczos"`` while the
        explicit ``M`` takes at most ``max_dense_bytes``, ``"lobpcg"`` (matrix-free) beyond.
    seed : int
        Seeds the start vectors of ``"lanczos"`` and ``"lobpcg"``.
    tol : float, optional
        Convergence tolerance of ``"lanczos"`` (relative; default 1e-10) and
        ``"lobpcg"`` (residual norm; default 1e-10 for float64 graphs, 1e-6 for
        float32 graphs, whose products are accurate to about 1e-7).
    maxiter : int, optional
        Iteration cap of ``"lanczos"`` / ``"lobpcg"`` (default: theirs, 500 for lobpcg).
    dense_threshold : int
        See ``method``.
    max_dense_bytes : int
        See ``method``.

    Returns
    -------
    Solution

    Examples
    --------
    >>> import numpy as np
    >>> from interpret_spectral.spectral import SiteGraphs, LayerDistributedOperator
    >>> v = np.random.default_rng(0).normal(size=(2, 16, 4))
    >>> op = LayerDistributedOperator([SiteGraphs.from_tokens("vv", grid=4, v=v)], out_grid=4)
    >>> solution = solve_exact(op, 3)
    >>> solution.vectors.shape, solution.method
    ((16, 3), 'eigh')
    """
    n_components = check_components(operator, n_components)
    if method not in EXACT_METHODS:
        raise ValueError(f"method must be one of {EXACT_METHODS}, got {method!r}")
    n = operator.size
    sparse = callable(getattr(operator, "sparse", None))
    on_device = torch.device(getattr(operator, "device", "cpu")).type != "cpu"
    if method == "auto":
        if sparse and n_components < n - 1:
            method = "lanczos"
        elif on_device and not sparse and n * n * 8 <= max_dense_bytes:
            method = "torch"
        elif n <= dense_threshold or n_components >= n - 1:
            method = "eigh"
        elif n * n * 8 <= max_dense_bytes:
            method = "lanczos"
        else:
            method = "lobpcg"
    if method == "lanczos" and n_components >= n - 1:
        raise ValueError(f"method='lanczos' needs n_components < N - 1 = {n - 1}; use method='eigh'")
    if tol is None:
        # ARPACK to machine precision on a sparse M (cheap products); 1e-10 on the dense one
        tol = (0.0 if sparse else 1e-10) if method != "lobpcg" or operator.dtype == torch.float64 else 1e-6
    options = {"method": method, "seed": seed, "tol": tol, "maxiter": maxiter,
               "dense_threshold": dense_threshold, "max_dense_bytes": max_dense_bytes}
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    if method == "torch":
        dense = getattr(operator, "dense_tensor", None)
        m_t = dense() if callable(dense) else torch.from_numpy(np.asarray(operator.dense(), dtype=np.float64))
        _, x_t = torch.linalg.eigh(m_t)  # ascending: the top n_components are the last columns
        top = x_t[:, n - n_components:]
        x = top.cpu().numpy()
        mx = (m_t @ top).cpu().numpy()
        del m_t, x_t
        # the finish's products are with the span of x itself: M x was computed on the device
        vectors, values = finish(x, lambda b: _in_span_product(x, mx, b))
        return Solution(vectors, values, 1, time.perf_counter() - start, method, math.nan, options)
    if method in ("eigh", "lanczos"):
        m = operator.sparse() if sparse and method == "lanczos" else operator.dense()
        if method == "eigh":
            # One BLAS thread: LAPACK's tridiagonalisation gains little from threads at these sizes,
            # and OpenBLAS threads spinning against torch's threads made it 5-20x slower on 2 cores.
            with single_thread("blas"):
                _, x = scipy.linalg.eigh(m, subset_by_index=[n - n_components, n - 1])
            iterations = 1
        else:
            count = [0]

            def matvec(v: np.ndarray) -> np.ndarray:
                count[0] += 1
                return m @ v

            linear = scipy.sparse.linalg.LinearOperator((n, n), matvec=matvec, dtype=np.float64)
            # One BLAS thread: ARPACK's products are single vectors, for which threads only add overhead;
            # on 2 busy cores they made a 1024-token solve 20x slower (4.8 s against 0.22 s).
            with single_thread("blas"):
                _, x = scipy.sparse.linalg.eigsh(linear, k=n_components, which="LA", v0=rng.standard_normal(n),
                                                 tol=tol, maxiter=maxiter)
            iterations = count[0]
        vectors, values = finish(x, lambda b: m @ b)
    else:
        apply = apply_numpy(operator)
        count = [0]

        def matmat(block: np.ndarray) -> np.ndarray:
            count[0] += 1
            return apply(block.reshape(n, -1))

        linear = scipy.sparse.linalg.LinearOperator((n, n), matvec=matmat, matmat=matmat, dtype=np.float64)
        guard = min(n - n_components, max(2, n_components // 2))
        block = rng.standard_normal((n, n_components + guard))
        eigenvalues, x = scipy.sparse.linalg.lobpcg(
            linear, block, largest=True, tol=tol, maxiter=500 if maxiter is None else maxiter
        )
        order = np.argsort(-eigenvalues)[:n_components]
        vectors, values = finish(x[:, order], apply)
        iterations = count[0]
    return Solution(vectors, values, iterations, time.perf_counter() - start, method, math.nan, options)


def _in_span_product(x: np.ndarray, mx: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``M b`` for ``b`` in the span of the orthonormal ``x``, from ``M x``: ``M x (x^T b)``."""
    return mx @ (x.T @ b)


class ExactSolver(Solver):
    """``"exact"``: the top eigenvectors of ``M`` (:func:`solve_exact`)."""

    name = "exact"

    def solve(self, operator: Any, n_components: int, *, seed: int = 0, **options: Any) -> Solution:
        return solve_exact(operator, n_components, seed=seed, **options)

    def memory_bytes(self, size: int, n_components: int, **options: Any) -> int:
        method = options.get("method", "auto")
        dense_threshold = options.get("dense_threshold", DENSE_THRESHOLD)
        max_dense_bytes = options.get("max_dense_bytes", MAX_DENSE_BYTES)
        dense = 8 * size * size
        if method in ("eigh", "torch") or (method == "auto" and size <= dense_threshold):
            return 3 * dense  # M, LAPACK's (cuSOLVER's) workspace and its eigenvectors
        if method == "lanczos" or (method == "auto" and dense <= max_dense_bytes):
            return dense + 8 * size * (2 * n_components + 20)
        return 8 * size * 12 * (n_components + max(2, n_components // 2))  # LOBPCG's blocks


# "adam" registers itself in interpret_spectral.spectral.adam, which the package imports.
_REGISTRY: Registry[Solver] = Registry("solver", Solver, ENTRY_POINT_GROUP, "solver")
_REGISTRY.register(ExactSolver())


def register_solver(solver: Solver | Callable[[], Solver], *, replace: bool = False) -> Solver:
    """Register a solver (an instance, its class or a factory) under its ``name``; returns it.

    Examples
    --------
    >>> class Again(ExactSolver):
    ...     name = "doc-exact"
    >>> register_solver(Again).name in available_solvers()
    True
    """
    return _REGISTRY.register(solver, replace=replace)


def get_solver(solver: str | Solver | Callable[[], Solver]) -> Solver:
    """The solver named ``solver``, or ``solver`` itself (an instance or a factory of one).

    Examples
    --------
    >>> get_solver("exact").name
    'exact'
    """
    return _REGISTRY.get(solver)


def available_solvers() -> list[str]:
    """Names of every registered solver: built-ins, registered in code, entry points.

    Examples
    --------
    >>> {"adam", "exact"} <= set(available_solvers())
    True
    """
    return _REGISTRY.available()


def solve(operator: Any, n_components: int, solver: str | Solver = "exact", *, seed: int = 0,
          **options: Any) -> Solution:
    """Run ``solver`` (a registered name or a :class:`Solver`) on ``operator`` with its options.

    Examples
    --------
    >>> import numpy as np
    >>> from interpret_spectral.spectral import SiteGraphs, LayerDistributedOperator
    >>> v = np.random.default_rng(0).normal(size=(1, 9, 4))
    >>> op = LayerDistributedOperator([SiteGraphs.from_tokens("vv", grid=3, v=v)], out_grid=3)
    >>> solve(op, 2, "exact").values.shape
    (2,)
    """
    return get_solver(solver).solve(operator, n_components, seed=seed, **options)

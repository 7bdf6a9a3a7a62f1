"""Eigen-solvers of the layer-distributed decomposition: exact and the paper's gradient solver.

Both solve ``max tr(X^T M X)`` subject to ``X^T X = I`` for the operator ``M`` of
:class:`~interpret_spectral.graphs.LayerDistributedOperator`, whose optimum is the
top ``n_components`` eigenvectors of ``M``.

``"exact"`` computes them directly:

- ``method="eigh"``: the explicit ``M`` (``N x N``) and LAPACK's ``eigh`` restricted to
  the top eigenpairs; the fastest for small ``N`` (the default up to
  :data:`DENSE_THRESHOLD` tokens, e.g. DINOv2 at 224 px = 256 tokens);
- ``method="lanczos"``: the explicit ``M`` and ARPACK (``scipy.sparse.linalg.eigsh``);
  faster than ``eigh`` for larger ``N`` (e.g. DINOv2 at 448 px = 1024 tokens, Stable
  Diffusion at 64x64 = 4096 tokens) while ``M`` fits in ``max_dense_bytes``;
- ``method="lobpcg"``: matrix-free: ``M`` is never formed, every product ``M Y`` recomputes
  attention row chunk by row chunk (``P Y`` is attention with values ``Y``), so memory
  is ``O(N m)`` plus one chunk, whatever the number of graphs.  Chosen when ``M`` does
  not fit in ``max_dense_bytes``.

``M``'s top eigenvector is near-constant (every ``P`` is row-stochastic, so
``P 1 = 1``).  It is kept, as in the authors' code, which clusters on all of its
``num_of_eig`` components (it only drops the first one to colour its PCA picture).

``"adam"`` is Eq. 4 of the paper as the authors' code runs it (``ncut_loss`` and the
single-image loop of ``xiao7199/layer_distributed_spectral_clustering``): the maps
``X`` are resampled to every site's grid and normalised per column there, and the
loss is

.. math::

    \\frac{\\sum_g w_g \\operatorname{mean}_c |x_c^T P_g x_c - 1|}{\\sum_g w_g}
    + \\text{ortho\\_weight} \\cdot \\operatorname{mean}_{\\text{sites}}
      \\operatorname{mean}_{c \\ne c'} (x_c^T x_{c'})^2

minimised by Adam (the orthogonality term is taken on each site's grid and averaged
over sites weighted by the total weight of their graphs; with the default weights
every site has one term per head, as in the authors' code, where it is per layer).
``parametrization="softmax"`` makes ``X`` the softmax over
components of free logits (the authors produce those logits with a small CNN from a
fixed random input; here the logits themselves are the parameters), ``"free"`` makes
``X`` the parameter.  The authors weigh the two terms 2 and 2; Adam is invariant to
the scale of the loss, so only their ratio, ``ortho_weight = 1``, matters.  With
several timesteps one recorded timestep is drawn per step (the authors' attention
buffer, with the store as the buffer), and ``accumulate`` steps of gradients are
summed before every Adam update (``accum_grads``).

Eq. 4 and the exact problem share their optimum only approximately: the soft
orthogonality lets maps lean towards the top eigenvector when that gains more
Rayleigh quotient than the penalty costs (with ``C`` components, roughly when the top
eigenvalue exceeds the next by more than ``2 ortho_weight / (C - 1)``), and
``|x^T P x - 1|`` stops rewarding a quotient at 1 where ``sym(P)`` can exceed 1.  On
planted groups the two subspaces are a few degrees apart; on DINOv2-S/14 attention
with 10 components their median principal angle was 9-13 degrees and the largest,
in the last components, 60-85 degrees (``benchmarks/bench_decompose.py``).

Every result goes through the same finish: orthogonalisation (Eq. 8,
:func:`orthogonalize`), a Rayleigh-Ritz rotation inside the span (so that the
columns are the best approximations of ``M``'s eigenvectors in that span, ordered by
their Rayleigh quotients under ``M``; for ``"exact"`` this returns the eigenvectors
themselves) and the deterministic sign of :func:`fix_signs`.  A rotation inside the
span does not change distances between rows, so K-Means on all components sees the
same embedding as after Eq. 8 alone.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import torch
from threadpoolctl import threadpool_limits

from interpret_spectral.spectral.graphs import LayerDistributedOperator, SiteGraphs

__all__ = [
    "SOLVERS",
    "EXACT_METHODS",
    "PARAMETRIZATIONS",
    "DENSE_THRESHOLD",
    "Solution",
    "orthogonalize",
    "fix_signs",
    "rayleigh_ritz",
    "solve",
    "solve_exact",
    "solve_adam",
]

SOLVERS: tuple[str, ...] = ("exact", "adam")
EXACT_METHODS: tuple[str, ...] = ("auto", "eigh", "lanczos", "lobpcg")
PARAMETRIZATIONS: tuple[str, ...] = ("free", "softmax")
INITS: tuple[str, ...] = ("random", "exact")

#: Largest number of output tokens for which ``method="auto"`` uses LAPACK ``eigh``
#: (measured on 2 busy cores, 10 components: at 576 tokens single-threaded eigh takes
#: 0.12 s and ARPACK 0.05-0.2 s; at 1024 tokens eigh 0.33 s and ARPACK 0.05 s on
#: DINOv2-S/14 attention, up to 1.1 s on a random matrix; at 4096 tokens eigh 4-20 s
#: and ARPACK about 1 s).
DENSE_THRESHOLD = 800

#: Default memory bound of the explicit ``M`` (float64) before ``"auto"`` goes matrix-free.
MAX_DENSE_BYTES = 2**30

#: Default steps of the gradient solver, from a random start and from the exact solution.
ADAM_STEPS = 1000
ADAM_STEPS_FROM_EXACT = 100


@dataclasses.dataclass
class Solution:
    """The result of one solve.

    Attributes
    ----------
    vectors : numpy.ndarray
        ``(N, n_components)`` float64, orthonormal columns ordered by ``values``.
    values : numpy.ndarray
        ``(n_components,)`` Rayleigh quotients ``x_c^T M x_c``, descending.
    iterations : int
        ``"exact"``: products with ``M`` (1 for ``eigh``: ``M`` built once);
        ``"adam"``: loss evaluations (steps).
    seconds : float
        Wall time of the solve.
    method : str
        ``"eigh"``, ``"lanczos"``, ``"lobpcg"`` or ``"adam"``.
    loss : float
        The final Eq. 4 loss (``"adam"``; NaN for ``"exact"``).
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
        """``tr(X^T M X)``, the sum of ``values``."""
        return float(np.sum(self.values))


def orthogonalize(x: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning ``x``'s columns: Eq. 8 of the paper.

    Eq. 8 takes the eigendecomposition ``X^T X = V diag(lambda) V^T`` and returns
    ``X V diag(lambda)^-1/2``, ordered by descending ``lambda``.  This computes the same
    thing from the thin SVD ``X = U S V^T`` (``X V S^-1 = U``, ``lambda = S^2``), which
    does not square the condition number and stays orthonormal when ``x`` is rank
    deficient.

    Parameters
    ----------
    x : numpy.ndarray
        ``(N, C)`` with ``N >= C``.

    Returns
    -------
    numpy.ndarray
        ``(N, C)`` float64 with orthonormal columns, the principal directions of
        ``x``'s columns ordered by descending singular value.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(50, 4))
    >>> u = orthogonalize(x)
    >>> bool(np.allclose(u.T @ u, np.eye(4)))
    True
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"orthogonalize expects a (tokens, components) matrix, got shape {x.shape}")
    if x.shape[0] < x.shape[1]:
        raise ValueError(f"cannot orthonormalise {x.shape[1]} columns of length {x.shape[0]}: ask for fewer components")
    if not np.all(np.isfinite(x)):
        raise ValueError("orthogonalize got non-finite entries; the solver diverged (lower lr)")
    u, _, _ = scipy.linalg.svd(x, full_matrices=False, lapack_driver="gesvd")
    return u


def fix_signs(x: np.ndarray) -> np.ndarray:
    """Flip every column so that its largest-magnitude entry is positive.

    Ties in magnitude go to the first such entry, so the result is deterministic.

    Examples
    --------
    >>> import numpy as np
    >>> fix_signs(np.array([[0.1, 0.9], [-0.8, 0.2]])).tolist()
    [[-0.1, 0.9], [0.8, 0.2]]
    """
    x = np.array(x, dtype=np.float64, copy=True)
    if x.ndim != 2:
        raise ValueError(f"fix_signs expects a (tokens, components) matrix, got shape {x.shape}")
    if x.shape[0] == 0:
        return x
    pivot = np.argmax(np.abs(x), axis=0)
    signs = np.sign(x[pivot, np.arange(x.shape[1])])
    signs[signs == 0] = 1.0
    return x * signs


def rayleigh_ritz(x: np.ndarray, mx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate orthonormal ``x`` into the eigenbasis of ``x^T M x`` (given ``mx = M x``).

    Returns ``(vectors, values)`` with ``vectors = x W`` ordered by descending Ritz
    value; ``values`` are then the Rayleigh quotients ``diag(vectors^T M vectors)``.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.diag([1.0, 3.0, 2.0])
    >>> x = np.eye(3)[:, :2]
    >>> vectors, values = rayleigh_ritz(x, m @ x)
    >>> values.tolist()
    [3.0, 1.0]
    """
    small = x.T @ mx
    small = 0.5 * (small + small.T)
    values, rotation = scipy.linalg.eigh(small)
    order = np.argsort(-values, kind="stable")
    return x @ rotation[:, order], values[order]


def _finish(x: np.ndarray, apply_m: Any) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 8, Rayleigh-Ritz, signs."""
    basis = orthogonalize(x)
    vectors, values = rayleigh_ritz(basis, np.asarray(apply_m(basis), dtype=np.float64))
    return fix_signs(vectors), values


def _check_components(operator: LayerDistributedOperator, n_components: int) -> int:
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    if n_components > operator.size:
        raise ValueError(
            f"n_components={n_components} exceeds the {operator.size} tokens of the output grid "
            f"{operator.out_grid}; ask for fewer components or a finer grid"
        )
    return int(n_components)


def _apply_numpy(operator: LayerDistributedOperator) -> Any:
    def apply(block: np.ndarray) -> np.ndarray:
        return operator.matmat(np.asarray(block)).cpu().to(torch.float64).numpy()

    return apply


def solve_exact(
    operator: LayerDistributedOperator,
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
    operator : LayerDistributedOperator
        The graphs and resampling.
    n_components : int
        Number of eigenvectors.
    method : {"auto", "eigh", "lanczos", "lobpcg"}
        See the module docstring.  ``"auto"``: ``"eigh"`` up to ``dense_threshold``
        tokens, ``"lanczos"`` while the explicit ``M`` takes at most
        ``max_dense_bytes``, ``"lobpcg"`` (matrix-free) beyond.
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
    >>> from interpret_spectral.graphs import SiteGraphs, LayerDistributedOperator
    >>> v = np.random.default_rng(0).normal(size=(2, 16, 4))
    >>> op = LayerDistributedOperator([SiteGraphs.from_tokens("vv", grid=4, v=v)], out_grid=4)
    >>> solution = solve_exact(op, 3)
    >>> solution.vectors.shape, solution.method
    ((16, 3), 'eigh')
    """
    n_components = _check_components(operator, n_components)
    if method not in EXACT_METHODS:
        raise ValueError(f"method must be one of {EXACT_METHODS}, got {method!r}")
    n = operator.size
    if method == "auto":
        if n <= dense_threshold or n_components >= n - 1:
            method = "eigh"
        elif n * n * 8 <= max_dense_bytes:
            method = "lanczos"
        else:
            method = "lobpcg"
    if method == "lanczos" and n_components >= n - 1:
        raise ValueError(f"method='lanczos' needs n_components < N - 1 = {n - 1}; use method='eigh'")
    if tol is None:
        tol = 1e-10 if method != "lobpcg" or operator.dtype == torch.float64 else 1e-6
    options = {"method": method, "seed": seed, "tol": tol, "maxiter": maxiter,
               "dense_threshold": dense_threshold, "max_dense_bytes": max_dense_bytes}
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    if method in ("eigh", "lanczos"):
        m = operator.dense()
        if method == "eigh":
            # One BLAS thread: LAPACK's tridiagonalisation gains little from threads at these sizes,
            # and OpenBLAS threads spinning against torch's threads made it 5-20x slower on 2 cores.
            with threadpool_limits(limits=1, user_api="blas"):
                _, x = scipy.linalg.eigh(m, subset_by_index=[n - n_components, n - 1])
            iterations = 1
        else:
            count = [0]

            def matvec(v: np.ndarray) -> np.ndarray:
                count[0] += 1
                return m @ v

            linear = scipy.sparse.linalg.LinearOperator((n, n), matvec=matvec, dtype=np.float64)
            _, x = scipy.sparse.linalg.eigsh(linear, k=n_components, which="LA", v0=rng.standard_normal(n),
                                             tol=tol, maxiter=maxiter)
            iterations = count[0]
        vectors, values = _finish(x, lambda b: m @ b)
    else:
        apply = _apply_numpy(operator)
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
        vectors, values = _finish(x[:, order], apply)
        iterations = count[0]
    return Solution(vectors, values, iterations, time.perf_counter() - start, method, math.nan, options)


class _QuadraticForms(torch.autograd.Function):
    """``diag(Z^T sym(P_g) Z)`` for every graph ``g`` of a site, with its exact gradient.

    Forward computes ``S = sym(P_g) Z`` once (attention with values ``Z`` plus the
    transposed softmax) and keeps it for backward: ``d(z^T sym(P) z)/dz = 2 sym(P) z``.
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, graphs: SiteGraphs) -> torch.Tensor:  # type: ignore[override]
        products = graphs.sym_matmul(z)
        ctx.save_for_backward(products)
        return (products * z[None]).sum(1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (products,) = ctx.saved_tensors
        return 2.0 * (products * grad[:, None, :]).sum(0), None


def _eq4_loss(
    x: torch.Tensor,
    operator: LayerDistributedOperator,
    graphs: list[SiteGraphs],
    ortho_weight: float,
) -> torch.Tensor:
    """Eq. 4 of the paper as the authors compute it, over ``graphs`` (one timestep)."""
    n_components = x.shape[1]
    eig = x.new_zeros(())
    ortho = x.new_zeros(())
    total = 0.0
    by_grid: dict[tuple[int, int], list[SiteGraphs]] = {}
    for graph in graphs:
        by_grid.setdefault(graph.grid, []).append(graph)
    for grid, site_graphs in by_grid.items():
        z = torch.nn.functional.normalize(operator.resample(x, grid), dim=0)
        if n_components > 1:
            gram = z.T @ z
            off = gram - torch.diag(torch.diagonal(gram))
            off_mean = off.pow(2).sum() / (n_components * (n_components - 1))
        else:
            off_mean = x.new_zeros(())
        for graph in site_graphs:
            weights = graph.weights.to(x.dtype)
            quotients = _QuadraticForms.apply(z, graph)
            eig = eig + (weights[:, None] * (quotients - 1.0).abs()).sum() / n_components
            site_weight = float(weights.sum())
            ortho = ortho + site_weight * off_mean
            total += site_weight
    if total <= 0:
        raise ValueError("the graphs of a timestep all weigh zero: give some a positive weight")
    return (eig + ortho_weight * ortho) / total


def _softmax_init_from(vectors: np.ndarray, seed: int) -> np.ndarray:
    """Logits whose softmax is a soft version of K-Means clusters of the rows of ``vectors``."""
    from sklearn.cluster import KMeans

    n_components = vectors.shape[1]
    labels = KMeans(n_clusters=n_components, n_init=4, random_state=seed).fit_predict(vectors)
    soft = np.full(vectors.shape, 0.2 / n_components)
    soft[np.arange(len(labels)), labels] += 0.8
    return np.log(soft)


def solve_adam(
    operator: LayerDistributedOperator,
    n_components: int,
    *,
    steps: int | None = None,
    lr: float | None = None,
    parametrization: str = "softmax",
    ortho_weight: float = 1.0,
    accumulate: int = 1,
    init: str = "random",
    seed: int = 0,
    cache_bytes: int = 2**30,
    exact_options: Mapping[str, Any] | None = None,
) -> Solution:
    """Eq. 4 of the paper minimised by Adam, as the authors run it (see the module docstring).

    Parameters
    ----------
    operator : LayerDistributedOperator
        The graphs (with their timesteps) and resampling.
    n_components : int
        Number of maps.
    steps : int, optional
        Loss evaluations (the authors' ``train_steps``).  Default 1000 from a random
        start, 100 from ``init="exact"``.
    lr : float, optional
        Adam's learning rate.  Default 0.05 for ``"softmax"`` and 0.01 for ``"free"``:
        the parameters here are the logits / maps themselves (unit-scale entries), not
        the weights of the authors' CNN (their lr is 1e-3 to 2e-3).
    parametrization : {"softmax", "free"}
        ``X = softmax(logits)`` over components (the authors'), or ``X`` itself.
    ortho_weight : float
        Weight of the orthogonality term relative to the eigenvalue term.
    accumulate : int
        Loss evaluations whose gradients are summed before each Adam update.
    init : {"random", "exact"}
        Standard-normal parameters, or a start from the exact solution: ``"free"``
        starts at the eigenvectors (scaled to unit-scale entries), ``"softmax"`` at
        logits of a soft K-Means clustering (k = ``n_components``) of their rows.
    seed : int
        Seeds the start, the timestep draws and the exact start.
    cache_bytes : int
        Memory for caching the dense ``P`` of the graphs (as the authors do); graphs
        beyond it recompute attention on every step.
    exact_options : mapping, optional
        Options of :func:`solve_exact` for ``init="exact"`` and nothing else.

    Returns
    -------
    Solution

    Examples
    --------
    >>> import numpy as np
    >>> from interpret_spectral.graphs import SiteGraphs, LayerDistributedOperator
    >>> v = np.random.default_rng(0).normal(size=(2, 16, 4))
    >>> op = LayerDistributedOperator([SiteGraphs.from_tokens("vv", grid=4, v=v)], out_grid=4)
    >>> solve_adam(op, 3, steps=20).vectors.shape
    (16, 3)
    """
    n_components = _check_components(operator, n_components)
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if steps is None:
        steps = ADAM_STEPS if init == "random" else ADAM_STEPS_FROM_EXACT
    for name, value in (("steps", steps), ("accumulate", accumulate)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if lr is None:
        lr = 0.05 if parametrization == "softmax" else 0.01
    if not lr > 0 or not math.isfinite(lr):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not ortho_weight >= 0:
        raise ValueError(f"ortho_weight must be non-negative, got {ortho_weight!r}")
    options = {"steps": int(steps), "lr": float(lr), "parametrization": parametrization,
               "ortho_weight": float(ortho_weight), "accumulate": int(accumulate), "init": init,
               "seed": seed, "cache_bytes": int(cache_bytes)}
    start = time.perf_counter()
    budget = int(cache_bytes)
    cached = []
    for graph in operator.graphs:
        itemsize = torch.finfo(graph.dtype).bits // 8
        need = graph.num_graphs * graph.num_tokens**2 * itemsize
        if not graph.materialized and graph.materialize(budget):
            cached.append(graph)
            budget -= need
    groups: dict[Any, list[SiteGraphs]] = {}
    for graph in operator.graphs:
        groups.setdefault(graph.timestep, []).append(graph)
    keys = sorted(groups, key=lambda t: -1 if t is None else t)
    n = operator.size
    generator = torch.Generator().manual_seed(int(seed))
    if init == "exact":
        exact = solve_exact(operator, n_components, seed=seed, **dict(exact_options or {}))
        options["exact_method"] = exact.method
        if parametrization == "free":
            initial = exact.vectors * math.sqrt(n)
        else:
            initial = _softmax_init_from(exact.vectors, seed)
        param = torch.tensor(initial, dtype=operator.dtype, device=operator.device)
    else:
        param = torch.randn(n, n_components, generator=generator, dtype=operator.dtype).to(operator.device)
    param.requires_grad_(True)
    optimizer = torch.optim.Adam([param], lr=float(lr))

    def maps() -> torch.Tensor:
        return torch.softmax(param, dim=1) if parametrization == "softmax" else param

    for step in range(int(steps)):
        if len(keys) > 1:
            key = keys[int(torch.randint(len(keys), (1,), generator=generator))]
        else:
            key = keys[0]
        loss = _eq4_loss(maps(), operator, groups[key], float(ortho_weight))
        loss.backward()
        if (step + 1) % accumulate == 0 or step == steps - 1:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        x = maps()
        final_loss = float(np.mean([float(_eq4_loss(x, operator, groups[k], float(ortho_weight))) for k in keys]))
        x = x.cpu().to(torch.float64).numpy()
    vectors, values = _finish(x, _apply_numpy(operator))
    for graph in cached:
        graph.release()
    return Solution(vectors, values, int(steps), time.perf_counter() - start, "adam", final_loss, options)


def solve(
    operator: LayerDistributedOperator,
    n_components: int,
    solver: Literal["exact", "adam"] = "exact",
    *,
    seed: int = 0,
    **options: Any,
) -> Solution:
    """Run ``solver`` (``"exact"`` or ``"adam"``) with its options.

    Examples
    --------
    >>> import numpy as np
    >>> from interpret_spectral.graphs import SiteGraphs, LayerDistributedOperator
    >>> v = np.random.default_rng(0).normal(size=(1, 9, 4))
    >>> op = LayerDistributedOperator([SiteGraphs.from_tokens("vv", grid=3, v=v)], out_grid=3)
    >>> solve(op, 2, "exact").values.shape
    (2,)
    """
    if solver == "exact":
        return solve_exact(operator, n_components, seed=seed, **options)
    if solver == "adam":
        return solve_adam(operator, n_components, seed=seed, **options)
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")

"""The common end of every solve: Eq. 8, Rayleigh-Ritz, deterministic signs; solver argument checks.

Examples
--------
>>> import numpy as np
>>> fix_signs(np.array([[-2.0], [1.0]])).ravel().tolist()
[2.0, -1.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import torch

__all__ = ["ORTHOGONALIZE", "orthogonalize", "fix_signs", "rayleigh_ritz", "finish", "check_components", "apply_numpy"]

def orthogonalize(x: np.ndarray, whiten: bool = False) -> np.ndarray:
    """Eq. 8 of the paper: ``X U`` with ``U`` the eigenvectors of ``X^T X`` (a rotation).

    With ``X^T X = U diag(lambda) U^T`` (``lambda`` descending), Eq. 8 is
    ``X_ortho = X U``: orthogonal columns of norms ``sqrt(lambda)``, the rows of ``X``
    rotated, so distances between rows (what K-Means sees) are those of ``X``.
    ``whiten=True`` returns ``X U diag(lambda)^-1/2`` instead: orthonormal columns
    (every direction of the span on one scale).  Both are computed from the thin SVD
    ``X = W S U^T`` (``X U = W S``, ``X U S^-1 = W``, ``lambda = S^2``), which does not
    square the condition number and keeps the whitened columns orthonormal when ``x``
    is rank deficient.  Each column's sign is that of the SVD (fix it with
    :func:`fix_signs`).

    Parameters
    ----------
    x : numpy.ndarray
        ``(N, C)`` with ``N >= C``.
    whiten : bool
        Scale every column to unit norm (``X U Lambda^-1/2``).

    Returns
    -------
    numpy.ndarray
        ``(N, C)`` float64, orthogonal columns ordered by descending ``lambda``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(50, 4))
    >>> u = orthogonalize(x, whiten=True)
    >>> bool(np.allclose(u.T @ u, np.eye(4)))
    True
    >>> r = orthogonalize(x)
    >>> bool(np.allclose(np.linalg.norm(r, axis=1), np.linalg.norm(x, axis=1)))
    True
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"orthogonalize expects a (tokens, components) matrix, got shape {x.shape}")
    if x.shape[0] < x.shape[1]:
        raise ValueError(f"cannot orthonormalise {x.shape[1]} columns of length {x.shape[0]}: ask for fewer components")
    if not np.all(np.isfinite(x)):
        raise ValueError(
            "orthogonalize got non-finite entries: the solver diverged (its input was finite; lower lr)"
        )
    w, singular, _ = scipy.linalg.svd(x, full_matrices=False, lapack_driver="gesvd")
    return w if whiten else w * singular


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


ORTHOGONALIZE: tuple[str, ...] = ("rotate", "whiten")


def finish(x: np.ndarray, apply_m: Any, orthogonalize_as: str = "whiten") -> tuple[np.ndarray, np.ndarray]:
    """The common end of every solve: Eq. 8, then Rayleigh-Ritz (whitened) or quotients, then signs.

    ``"whiten"``: orthonormal basis of the span, rotated by Rayleigh-Ritz into the best
    approximations of ``M``'s eigenvectors, ordered by their Rayleigh quotients (for
    exact eigenvectors: themselves).  ``"rotate"``: Eq. 8 as the paper writes it,
    ``X U`` (columns ordered by ``lambda``); ``values`` are the Rayleigh quotients of
    its unit-normalised columns.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.diag([3.0, 1.0, 2.0])
    >>> vectors, values = finish(np.eye(3)[:, :2], lambda b: m @ b)
    >>> values.tolist()
    [3.0, 1.0]
    """
    if orthogonalize_as not in ORTHOGONALIZE:
        raise ValueError(f"orthogonalize must be one of {ORTHOGONALIZE}, got {orthogonalize_as!r}")
    basis = orthogonalize(x, whiten=True)
    if orthogonalize_as == "whiten":
        vectors, values = rayleigh_ritz(basis, np.asarray(apply_m(basis), dtype=np.float64))
        return fix_signs(vectors), values
    values = np.einsum("nc,nc->c", basis, np.asarray(apply_m(basis), dtype=np.float64))
    return fix_signs(orthogonalize(x)), values


def check_components(operator: Any, n_components: int) -> int:
    """``n_components`` as an int, or a clear error when it is not in ``[1, operator.size]``.

    Examples
    --------
    >>> class Op:
    ...     size = 4
    >>> check_components(Op(), 2)
    2
    """
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    if n_components > operator.size:
        where = getattr(operator, "out_grid", None)
        raise ValueError(
            f"n_components={n_components} exceeds the {operator.size} tokens of the output grid"
            f"{'' if where is None else f' {where}'}; ask for fewer components or a finer grid"
        )
    return int(n_components)


def apply_numpy(operator: Any) -> Any:
    """``block -> M @ block`` as float64 numpy, for an operator whose ``matmat`` returns torch or numpy.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from interpret_spectral.spectral.dataset_graphs import SparseOperator
    >>> apply_numpy(SparseOperator(sp.identity(2, format="csr")))(np.ones((2, 1))).tolist()
    [[1.0], [1.0]]
    """

    def apply(block: np.ndarray) -> np.ndarray:
        result = operator.matmat(np.asarray(block))
        if isinstance(result, torch.Tensor):
            return result.cpu().to(torch.float64).numpy()
        return np.asarray(result, dtype=np.float64)

    return apply

"""The one Eq. 4 loss of the paper, for per-image and dataset-level decompositions alike.

As the authors compute it (``ncut_loss`` of ``xiao7199/layer_distributed_spectral_clustering``):
the maps ``X`` are resampled to every site's grid and normalised per column there
(``z``), and

.. math::

    \\frac{\\sum_g w_g \\operatorname{mean}_c |z_c^T P_g z_c - 1|
           + \\text{ortho\\_weight} \\sum_g w_g \\operatorname{mean}_{c \\ne c'} (z_c^T z_{c'})^2}
          {\\sum_g w_g}

with ``z^T P z`` taken as ``z^T sym(P) z`` (equal for every ``z``).  A graph is
anything with a ``sym(P) z`` product: the dense row-chunked
:class:`~interpret_spectral.spectral.site_graphs.SiteGraphs` of one image, or the
sparse top-k graph of a minibatch of images (:class:`SparseGraph`).  Both go through
:class:`QuadraticForms`, whose gradient ``2 sym(P) z`` reuses the forward product.

Examples
--------
>>> import scipy.sparse as sp, torch
>>> graph = SparseGraph(sp.identity(4, format="csr"))
>>> x = torch.ones(4, 1, dtype=torch.float64)
>>> float(eq4_loss([Eq4Term(x, [(graph.sym_matmul, torch.ones(1))])], ortho_weight=1.0))
0.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["Eq4Term", "Eq4Draw", "QuadraticForms", "SparseProduct", "SparseGraph", "eq4_loss"]

#: ``sym(P) z`` for every graph of a group: ``(graphs, n, m)`` from ``z`` of shape ``(n, m)``.
SymProduct = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass
class Eq4Term:
    """The maps on one grid and the graphs that live on it.

    Attributes
    ----------
    columns : torch.Tensor
        ``(tokens, components)`` maps resampled to the grid (not yet normalised).
    graphs : sequence of (product, weights)
        Per group of graphs, its ``sym(P) z`` product and ``(graphs,)`` weights.
    """

    columns: torch.Tensor
    graphs: Sequence[tuple[SymProduct, torch.Tensor]]


@dataclasses.dataclass
class Eq4Draw:
    """One draw of a gradient solver's schedule: which parameter blocks, which Eq. 4 terms.

    Attributes
    ----------
    blocks : sequence of int
        The parameter blocks (samples) the draw optimises.
    terms : callable
        Maps of those blocks ``(blocks, tokens_per_block, components)`` -> list of :class:`Eq4Term`.
    repeat : int
        Optimiser steps taken on this draw.
    state : dict, optional
        The schedule's position after the draw, for checkpoints (None: not resumable).
    epoch_end : bool
        Whether the draw ends a pass over the data (a checkpoint is written there).
    """

    blocks: Sequence[int]
    terms: Callable[[torch.Tensor], list[Eq4Term]]
    repeat: int = 1
    state: dict[str, Any] | None = None
    epoch_end: bool = False


class QuadraticForms(torch.autograd.Function):
    """``diag(z^T sym(P_g) z)`` for every graph ``g`` of a group, with its exact gradient.

    Forward computes ``S = sym(P_g) z`` once (for attention: attention with values
    ``z`` plus the transposed softmax) and keeps it for backward:
    ``d(z^T sym(P) z)/dz = 2 sym(P) z``.
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, product: SymProduct) -> torch.Tensor:  # type: ignore[override]
        products = product(z.detach())
        ctx.save_for_backward(products)
        return (products * z.detach()[None]).sum(1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (products,) = ctx.saved_tensors
        return 2.0 * (products * grad[:, None, :]).sum(0), None


class SparseProduct(torch.autograd.Function):
    """``matrix @ x`` for a constant scipy sparse ``matrix``; the gradient is ``matrix^T @ grad``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, matrix: sp.csr_matrix) -> torch.Tensor:  # type: ignore[override]
        ctx.matrix = matrix
        return torch.from_numpy(np.asarray(matrix @ x.detach().numpy())).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return torch.from_numpy(np.asarray(ctx.matrix.T @ grad.numpy())).to(grad.dtype), None


class SparseGraph:
    """One sparse symmetric ``sym(P)`` (scipy) as a graph of the Eq. 4 loss.

    Examples
    --------
    >>> import scipy.sparse as sp, torch
    >>> SparseGraph(sp.identity(2, format="csr")).sym_matmul(torch.ones(2, 1)).shape
    torch.Size([1, 2, 1])
    """

    def __init__(self, symmetric: sp.csr_matrix) -> None:
        self.symmetric = symmetric

    def sym_matmul(self, z: torch.Tensor) -> torch.Tensor:
        """``sym(P) z`` as a ``(1, n, m)`` tensor of ``z``'s dtype."""
        return torch.from_numpy(np.asarray(self.symmetric @ z.numpy())).to(z.dtype)[None]


def _off_diagonal_mean(z: torch.Tensor) -> torch.Tensor:
    n_components = z.shape[1]
    if n_components < 2:
        return z.new_zeros(())
    gram = z.T @ z
    off = gram - torch.diag(torch.diagonal(gram))
    return off.pow(2).sum() / (n_components * (n_components - 1))


def eq4_loss(terms: Sequence[Eq4Term], ortho_weight: float = 1.0) -> torch.Tensor:
    """The Eq. 4 loss over ``terms`` (see the module docstring); differentiable in the maps.

    Parameters
    ----------
    terms : sequence of Eq4Term
        The maps on every grid with the graphs on that grid.
    ortho_weight : float
        Weight of the orthogonality term (the authors weigh both terms 2; only the ratio
        matters to Adam).

    Returns
    -------
    torch.Tensor
        A scalar.

    Examples
    --------
    >>> import scipy.sparse as sp, torch
    >>> walk = SparseGraph(sp.csr_matrix([[0.0, 1.0], [1.0, 0.0]]))
    >>> x = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    >>> round(float(eq4_loss([Eq4Term(x, [(walk.sym_matmul, torch.ones(1))])])), 6)
    1.0
    """
    if not terms:
        raise ValueError("the Eq. 4 loss needs at least one graph")
    first = terms[0].columns
    n_components = first.shape[1]
    eig = first.new_zeros(())
    ortho = first.new_zeros(())
    total = 0.0
    for term in terms:
        z = torch.nn.functional.normalize(term.columns, dim=0)
        off_mean = _off_diagonal_mean(z)
        for product, weights in term.graphs:
            weights = weights.to(z.dtype)
            quotients = QuadraticForms.apply(z, product)
            eig = eig + (weights[:, None] * (quotients - 1.0).abs()).sum() / n_components
            site_weight = float(weights.sum())
            ortho = ortho + site_weight * off_mean
            total += site_weight
    if total <= 0:
        raise ValueError("the graphs of a draw all weigh zero: give some a positive weight")
    return (eig + float(ortho_weight) * ortho) / total

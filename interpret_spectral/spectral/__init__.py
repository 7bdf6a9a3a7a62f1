"""Spectral analysis: graph kinds, the layer-distributed operator, solvers, decompositions.

The two places the paper varies are registries: graph kinds
(:func:`register_graph_kind`, :func:`available_graph_kinds`; built-ins ``"qk"`` and
``"vv"``) and solvers (:func:`register_solver`, :func:`available_solvers`; built-ins
``"exact"``, ``"adam"`` and ``"adam-buffer"``, the paper's diffusion buffer).  Both :func:`decompose` (per image) and
:func:`decompose_dataset` (across images) take a name or an object of either.

Examples
--------
>>> {"qk", "vv"} <= set(available_graph_kinds()), {"adam", "adam-buffer", "exact"} <= set(available_solvers())
(True, True)
"""

from interpret_spectral.spectral.adam import AdamSolver, solve_adam
from interpret_spectral.spectral.dataset import decompose_dataset
from interpret_spectral.spectral.decompose import decompose, sample_operator, site_contributions
from interpret_spectral.spectral.finish import fix_signs, orthogonalize, rayleigh_ritz
from interpret_spectral.spectral.kinds import (
    GraphKind, QueryKeyGraph, ValueCosineGraph, available_graph_kinds, get_graph_kind, register_graph_kind,
)
from interpret_spectral.spectral.operator import LayerDistributedOperator
from interpret_spectral.spectral.sd_sampling import BufferedAdamSolver, DiffusionSampling
from interpret_spectral.spectral.site_graphs import NonFiniteError, SiteGraphs
from interpret_spectral.spectral.solvers import (
    ExactSolver, Solution, Solver, available_solvers, get_solver, register_solver, solve, solve_exact,
)

__all__ = [
    "decompose", "decompose_dataset", "site_contributions", "sample_operator",
    "GraphKind", "QueryKeyGraph", "ValueCosineGraph", "register_graph_kind", "get_graph_kind",
    "available_graph_kinds",
    "Solver", "Solution", "ExactSolver", "AdamSolver", "register_solver", "get_solver", "available_solvers",
    "solve", "solve_exact", "solve_adam", "orthogonalize", "fix_signs", "rayleigh_ritz",
    "SiteGraphs", "LayerDistributedOperator", "NonFiniteError", "DiffusionSampling", "BufferedAdamSolver",
]

"""Spectral analysis: affinity graphs, the layer-distributed operator, solvers, decompositions."""

from interpret_spectral.spectral.dataset import decompose_dataset
from interpret_spectral.spectral.decompose import decompose, site_contributions

__all__ = ["decompose", "decompose_dataset", "site_contributions"]

"""Segmentation: K-Means on eigenvectors, upsampling, baselines and CRF refinement."""

from interpret_spectral.segmentation.kmeans import segment, upsample_labels

__all__ = ["segment", "upsample_labels"]

"""Evaluation: segmentation metrics, the coordinate-regression probe, spatial-semantic labels, dataset folders."""

from interpret_spectral.evaluation.metrics import matched_miou, oracle_miou, oracle_miou_per_image

__all__ = ["matched_miou", "oracle_miou", "oracle_miou_per_image"]

"""Segmentation: K-Means on eigenvectors with a K choice, upsampling, baselines and CRF refinement.

- :func:`segment` (:mod:`.kmeans`) clusters a decomposition's eigenvector rows; K is
  chosen per sample by :mod:`.choose_k`; ``refine="crf"`` refines with :mod:`.crf`;
- :func:`upsample_labels` (:mod:`.upsample`) brings token-grid labels to image size;
- the paper's Table 1 baselines read one site of a store: :func:`ncut`,
  :func:`tokencut` (:mod:`.ncut`), :func:`maskcut` (:mod:`.maskcut`) and
  :func:`kmeans_features` (:mod:`.features`).
"""

from interpret_spectral.segmentation.choose_k import DEFAULT_K_METHOD, K_METHODS, choose_k
from interpret_spectral.segmentation.features import kmeans_features
from interpret_spectral.segmentation.kmeans import segment
from interpret_spectral.segmentation.maskcut import maskcut
from interpret_spectral.segmentation.ncut import ncut, ncut_eigenvectors, tokencut
from interpret_spectral.segmentation.upsample import upsample_labels

__all__ = [
    "segment",
    "upsample_labels",
    "choose_k",
    "K_METHODS",
    "DEFAULT_K_METHOD",
    "kmeans_features",
    "ncut",
    "ncut_eigenvectors",
    "tokencut",
    "maskcut",
]

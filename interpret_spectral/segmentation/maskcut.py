"""MaskCut (Wang et al., CutLER, CVPR 2023): foreground masks by repeated NCut bipartitions.

The TokenCut graph of one site (cosine similarity of the final keys, binarised) is cut
in two with its second smallest generalised eigenvector; the foreground's tokens are
removed and the next mask is cut (:func:`maskcut`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import xarray as xr

from interpret_spectral.segmentation._tokens import select_site, unit_rows
from interpret_spectral.segmentation.ncut import ncut_eigenvectors

__all__ = ["maskcut"]

_MASKCUT_REFERENCE = (
    "Wang et al., Cut and Learn for Unsupervised Object Detection and Instance Segmentation (CutLER), CVPR 2023"
)


def _maskcut_sample(
    tokens: np.ndarray, grid: tuple[int, int], n_masks: int, tau: float, eps: float
) -> list[np.ndarray]:
    """CutLER's ``maskcut_forward`` on one sample's tokens: a list of boolean (h, w) masks."""
    from scipy import ndimage

    height, width = grid
    unit = unit_rows(tokens)
    removed = np.zeros(height * width, dtype=bool)
    masks: list[np.ndarray] = []
    previous: np.ndarray | None = None
    corners = [0, width - 1, (height - 1) * width, height * width - 1]
    for i in range(n_masks):
        if previous is not None:
            removed |= previous.reshape(-1)
        if removed.all():
            masks.append(np.zeros((height, width), dtype=bool))
            continue
        # Removed tokens keep their place with zero features: every edge to them weighs eps.
        kept = unit * ~removed[:, None]
        _, vectors = ncut_eigenvectors(kept @ kept.T, 1, tau=tau, eps=eps)
        vector = vectors[:, 0]
        bipartition = vector > vector.mean()
        seed = int(np.abs(vector).argmax())
        # Foreground: the side holding the eigenvector's peak, unless it covers 3+ image corners.
        if int(bipartition[corners].sum()) >= 3 or not bipartition[seed]:
            vector, bipartition = -vector, ~bipartition
        seed = int(vector.argmax())
        components, _ = ndimage.label(bipartition.reshape(height, width))
        mask = components == components.reshape(-1)[seed]
        if previous is not None:
            union = np.logical_or(previous, mask).sum()
            iou = np.logical_and(previous, mask).sum() / union if union else 0.0
            if iou > 0.5 or mask.mean() <= 0.01:
                mask = np.zeros_like(mask)
        previous = mask
        masks.append(mask)
    return masks


def maskcut(
    store: xr.DataTree,
    n_masks: int = 3,
    tau: float = 0.15,
    site: int | str = -1,
    source: Literal["features", "q", "k", "v"] = "k",
    center: bool = False,
    eps: float = 1e-5,
    timestep: int | None = None,
) -> xr.DataArray:
    """MaskCut (CutLER): up to ``n_masks`` foreground masks by repeated NCut bipartitions.

    Follows ``maskcut_forward`` of CutLER (Wang et al., CVPR 2023) on the token grid:
    the TokenCut graph (cosine similarity of the final keys binarised at ``tau``,
    ``eps`` elsewhere); the second smallest generalised eigenvector split at its mean;
    the foreground is the side holding the entry of largest magnitude, flipped when
    the foreground covers 3 or more of the 4 grid corners; the mask is the 4-connected
    component of the foreground containing the eigenvector's peak
    (``scipy.ndimage.label``).  Its tokens are then removed (features zeroed, so
    their edges weigh ``eps``) and the next mask is cut; a mask overlapping the
    previous one with IoU > 0.5 or covering <= 1 % of the grid is dropped.  CRF
    post-processing (CutLER's) is not applied.

    Parameters
    ----------
    store : xarray.DataTree
        A store.
    n_masks : int
        Number of masks (CutLER's ``N``, 3).
    tau : float
        Binarisation threshold (0.15 in CutLER's paper and demo).
    site : int or str
        Forward index (``-1``: last) or name.
    source : {"features", "q", "k", "v"}
        Tokens of the graph (CutLER: keys).
    center : bool
        Subtract the sample's mean token before the cosine similarity (off by default,
        as CutLER; see :func:`~interpret_spectral.segmentation.ncut` for when to centre).
    eps : float
        Weight of edges under ``tau``.
    timestep : int, optional
        Position along ``timestep`` for stores that have one.

    Returns
    -------
    xarray.DataArray
        ``labels (sample, y, x)`` int32: 0 background, ``i`` the ``i``-th mask (earlier
        masks win overlaps); coordinate ``k (sample)``, the number of distinct labels.

    Examples
    --------
    >>> labels = maskcut(store, n_masks=3)  # doctest: +SKIP
    >>> int(labels.max()) <= 3  # doctest: +SKIP
    True
    """
    if isinstance(n_masks, bool) or int(n_masks) < 1:
        raise ValueError(f"n_masks must be a positive integer, got {n_masks}")
    chosen = select_site(store, site, source, timestep)
    ids, name, source, timestep = chosen.ids, chosen.name, chosen.source, chosen.timestep
    height, width = chosen.grid
    labels = np.zeros((len(ids), height, width), dtype=np.int32)
    for index in range(len(ids)):
        masks = _maskcut_sample(chosen.tokens(index, center=center), chosen.grid, int(n_masks), float(tau), float(eps))
        for number, mask in enumerate(masks, start=1):
            labels[index][mask & (labels[index] == 0)] = number
    counts = np.array([len(np.unique(sample)) for sample in labels], dtype=np.int64)
    attrs: dict[str, Any] = {
        "method": "maskcut",
        "site": name,
        "source": source,
        "n_masks": int(n_masks),
        "center": int(bool(center)),
        "tau": float(tau),
        "eps": float(eps),
        "labels": "0 background, i the i-th mask in discovery order",
        "crf": 0,
        "reference": _MASKCUT_REFERENCE,
    }
    if timestep is not None:
        attrs["timestep"] = int(timestep)
    return xr.DataArray(
        labels,
        dims=("sample", "y", "x"),
        coords={"sample": ids, "y": np.arange(height), "x": np.arange(width), "k": ("sample", counts)},
        attrs=attrs,
        name="labels",
    )

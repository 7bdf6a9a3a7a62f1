"""Unsupervised instance segmentation from eigenvectors (the paper's Appendix D.2, Table 8).

:func:`instance_proposals` turns a decomposition into scored instance masks per image:

1. **Features**: every eigenvector is scaled to unit norm over the pixels, then
   min-max scaled to ``[-1, 1]`` (as the authors' code).
2. **K-Means regions**: for every K in ``k_range`` (2..10), K-Means on the pixel
   rows; each cluster is split into its 8-connected components (``scipy.ndimage.label``);
   every component is a proposal.
3. **Agglomerative expansion**: the components of each K are merged by Ward
   agglomerative clustering of their mean features
   (``sklearn.cluster.AgglomerativeClustering(linkage="ward")``) with a connectivity
   graph linking spatially adjacent components (8-neighbourhood); every node of the
   merge tree (the union of the components below it, split again into connected
   parts) is a proposal.
4. **Filtering**: duplicates are removed; proposals covering less than ``min_area``
   or more than ``max_area`` of the grid, or touching ``border_sides`` or more of
   the 4 grid borders (background, as in the authors' code; relaxed to 3, then to
   none, when nothing is left) are dropped.
5. **Score**: the silhouette (``sklearn.metrics.silhouette_score``, Euclidean) of
   the proposal's pixels against a balanced sample of background pixels: the
   ``n`` pixels outside the proposal closest to it in feature space (``n`` = its
   size).  Proposals scoring ``<= 0`` are dropped.
6. **Non-maximum suppression**: by decreasing score, a proposal overlapping a kept
   one with mask IoU above ``nms_iou`` (0.7, the authors' value) is dropped; at most
   ``max_proposals`` are kept.

Masks are upsampled to image size by nearest neighbour
(:func:`interpret_spectral.segmentation.upsample_labels`) and boxes ``[x, y, w, h]``
are read from the upsampled masks.  :func:`labels_to_proposals` turns the label maps
of the baselines (:func:`interpret_spectral.segmentation.maskcut`; TokenCut is its
first mask) into proposals of the same kind, scored by discovery order.

Examples
--------
>>> import numpy as np
>>> from interpret_spectral.applications.instances import planted_instances
>>> vectors, truth = planted_instances()
>>> found = instance_proposals(vectors, k_range=[3])[0]
>>> sorted(int(m.sum()) for m in found.masks[:2]) == sorted(int(t.sum()) for t in truth)
True
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from interpret_spectral.segmentation import upsample_labels
from interpret_spectral.store.decomposition import as_vectors

__all__ = [
    "InstanceProposals",
    "instance_proposals",
    "labels_to_proposals",
    "planted_instances",
    "mask_boxes",
]

_PAPER = (
    "Zhang, Yunis & Maire, Deciphering 'What' and 'Where' Visual Pathways from Spectral "
    "Clustering of Layer-Distributed Neural Representations, CVPR 2024, Appendix D.2"
)
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclasses.dataclass(frozen=True, eq=False)
class InstanceProposals:
    """Scored instance masks of one image.

    Attributes
    ----------
    sample : str
        The image's sample id.
    masks : numpy.ndarray
        ``(n, H, W)`` bool masks at image size (the grid when no size was given).
    scores : numpy.ndarray
        ``(n,)`` float scores, best first.
    boxes : numpy.ndarray
        ``(n, 4)`` float boxes ``[x, y, width, height]`` of ``masks``.
    grid_masks : numpy.ndarray
        ``(n, h, w)`` bool masks on the eigenvector grid.
    """

    sample: str
    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    grid_masks: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """``[x, y, width, height]`` box of every ``(H, W)`` mask of an ``(n, H, W)`` stack.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((1, 4, 5), bool); m[0, 1:3, 2:5] = True
    >>> mask_boxes(m).tolist()
    [[2.0, 1.0, 3.0, 2.0]]
    """
    masks = np.asarray(masks, dtype=bool)
    boxes = np.zeros((len(masks), 4), dtype=np.float64)
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size:
            boxes[i] = (cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1)
    return boxes


def _prepare(rows: np.ndarray) -> np.ndarray:
    """Unit norm over pixels per component, then min-max to [-1, 1] per component."""
    norm = np.linalg.norm(rows, axis=0, keepdims=True)
    unit = rows / np.where(norm > 0, norm, 1.0)
    low, high = unit.min(axis=0, keepdims=True), unit.max(axis=0, keepdims=True)
    span = np.where(high > low, high - low, 1.0)
    return 2.0 * (unit - low) / span - 1.0


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of a boolean (h, w) mask."""
    from scipy import ndimage

    labelled, count = ndimage.label(mask, structure=_EIGHT)
    return [labelled == i for i in range(1, count + 1)]


def _regions(labels: np.ndarray) -> np.ndarray:
    """Split every cluster of a (h, w) label map into 8-connected regions numbered 0..r-1."""
    regions = np.full(labels.shape, -1, dtype=np.int64)
    count = 0
    for value in np.unique(labels):
        for part in _components(labels == value):
            regions[part] = count
            count += 1
    return regions


def _adjacency(regions: np.ndarray) -> np.ndarray:
    """(r, r) 0/1 matrix: regions that touch in the 8-neighbourhood."""
    r = int(regions.max()) + 1
    adjacency = np.zeros((r, r), dtype=np.int64)
    h, w = regions.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = regions[max(0, -dy): h - max(0, dy), max(0, -dx): w - max(0, dx)]
        b = regions[max(0, dy):, max(0, dx): w + min(0, dx)][: a.shape[0], : a.shape[1]]
        differ = a != b
        adjacency[a[differ], b[differ]] = 1
        adjacency[b[differ], a[differ]] = 1
    return adjacency


def _ward_unions(regions: np.ndarray, features: np.ndarray) -> list[np.ndarray]:
    """Masks of every internal node of the Ward merge tree over spatially adjacent regions."""
    from scipy.sparse.csgraph import connected_components
    from sklearn.cluster import AgglomerativeClustering

    r = int(regions.max()) + 1
    if r < 2:
        return []
    flat = regions.reshape(-1)
    counts = np.bincount(flat, minlength=r)
    centres = np.zeros((r, features.shape[1]))
    np.add.at(centres, flat, features)
    centres /= counts[:, None]
    adjacency = _adjacency(regions)
    n_parts, _ = connected_components(adjacency, directed=False)
    if n_parts >= r:
        return []
    model = AgglomerativeClustering(n_clusters=n_parts, linkage="ward", connectivity=adjacency,
                                    compute_full_tree=True)
    model.fit(centres)
    members: list[np.ndarray] = [regions == i for i in range(r)]
    for left, right in model.children_:
        members.append(members[left] | members[right])
    return members[r:]


def _touching_sides(mask: np.ndarray) -> int:
    return int(mask[0].any()) + int(mask[-1].any()) + int(mask[:, 0].any()) + int(mask[:, -1].any())


def _candidates(features: np.ndarray, grid: tuple[int, int], ks: Sequence[int], seed: int,
                n_init: int) -> list[np.ndarray]:
    """Unique candidate masks (h, w) of K-Means regions and their Ward unions, over every K."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    seen: dict[bytes, np.ndarray] = {}
    distinct = len(np.unique(features, axis=0))
    for k in ks:
        if k > distinct:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(features).labels_
        regions = _regions(labels.reshape(grid))
        masks = [regions == i for i in range(int(regions.max()) + 1)]
        for union in _ward_unions(regions, features):
            masks.extend(_components(union))
        for mask in masks:
            seen.setdefault(np.packbits(mask).tobytes(), mask)
    return list(seen.values())


def _filter(masks: list[np.ndarray], min_area: float, max_area: float, border_sides: int) -> list[np.ndarray]:
    total = masks[0].size if masks else 1
    sized = [m for m in masks if min_area * total <= m.sum() <= max_area * total]
    for sides in (border_sides, max(border_sides, 3), 5):
        kept = [m for m in sized if _touching_sides(m) < sides]
        if kept:
            return kept
    return sized


def _score(mask: np.ndarray, distances: np.ndarray) -> float:
    """Silhouette of the mask's pixels against as many background pixels, those closest to the mask."""
    from sklearn.metrics import silhouette_score

    fg = np.flatnonzero(mask.reshape(-1))
    bg_all = np.flatnonzero(~mask.reshape(-1))
    if len(fg) < 2 or len(bg_all) < 2:
        return float("nan")
    closeness = distances[np.ix_(bg_all, fg)].min(axis=1)
    bg = bg_all[np.argsort(closeness, kind="stable")[: len(fg)]]
    chosen = np.concatenate([fg, bg])
    labels = np.r_[np.ones(len(fg), dtype=int), np.zeros(len(bg), dtype=int)]
    return float(silhouette_score(distances[np.ix_(chosen, chosen)], labels, metric="precomputed"))


def _nms(masks: list[np.ndarray], scores: np.ndarray, iou: float, limit: int) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    flat = np.stack([m.reshape(-1) for m in masks]).astype(np.float64) if masks else np.zeros((0, 0))
    kept: list[int] = []
    for i in order:
        if len(kept) >= limit:
            break
        if kept:
            inter = flat[kept] @ flat[i]
            union = flat[kept].sum(axis=1) + flat[i].sum() - inter
            if (inter / union > iou).any():
                continue
        kept.append(int(i))
    return kept


def _image_sizes(image_sizes: Any, n: int) -> list[tuple[int, int] | None]:
    if image_sizes is None:
        return [None] * n
    sizes = list(image_sizes)
    if len(sizes) == 2 and all(isinstance(v, (int, np.integer)) for v in sizes):
        return [(int(sizes[0]), int(sizes[1]))] * n
    if len(sizes) != n:
        raise ValueError(f"{len(sizes)} image sizes for {n} samples; give one (H, W) per sample or one for all")
    return [(int(h), int(w)) for h, w in sizes]


def _finish(sample: str, grid_masks: list[np.ndarray], scores: Sequence[float],
            size: tuple[int, int] | None, grid: tuple[int, int]) -> InstanceProposals:
    stack = np.stack(grid_masks).astype(bool) if grid_masks else np.zeros((0, *grid), dtype=bool)
    full = upsample_labels(stack, size) if size is not None and len(stack) else stack
    if size is not None and not len(stack):
        full = np.zeros((0, *size), dtype=bool)
    return InstanceProposals(sample=sample, masks=np.asarray(full, dtype=bool),
                             scores=np.asarray(scores, dtype=np.float64), boxes=mask_boxes(full),
                             grid_masks=stack)


def instance_proposals(
    decomposition: xr.Dataset | xr.DataArray,
    image_sizes: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
    k_range: Iterable[int] = range(2, 11),
    min_area: float = 0.01,
    max_area: float = 0.9,
    border_sides: int = 2,
    nms_iou: float = 0.7,
    max_proposals: int = 100,
    seed: int = 0,
    n_init: int = 10,
) -> list[InstanceProposals]:
    """Scored instance proposals of every image of a decomposition (Appendix D.2).

    Parameters
    ----------
    decomposition : xarray.Dataset or xarray.DataArray
        Eigenvectors ``(sample, y, x, component)`` (what :func:`interpret_spectral.decompose`
        returns), read through :func:`interpret_spectral.store.decomposition.as_vectors`.
    image_sizes : (int, int) or sequence of (int, int), optional
        ``(H, W)`` to upsample the masks to: one for all images or one per image.
        Default: masks stay on the eigenvector grid.
    k_range : iterable of int
        The K of K-Means (2..10 in the paper).
    min_area, max_area : float
        Fractions of the grid a proposal must cover at least / at most.
    border_sides : int
        Proposals touching this many of the 4 grid borders or more are background.
    nms_iou : float
        Mask IoU above which a lower-scored proposal is a duplicate.
    max_proposals : int
        At most this many proposals per image (COCO's AR@100 reads 100).
    seed, n_init : int
        K-Means ``random_state`` and restarts.

    Returns
    -------
    list of InstanceProposals
        One per sample, proposals best first, every score > 0.

    Examples
    --------
    >>> vectors, truth = planted_instances()
    >>> result = instance_proposals(vectors, image_sizes=(24, 24), k_range=[3])[0]
    >>> result.masks.shape[1:], bool(result.scores[0] > 0)
    ((24, 24), True)
    """
    vectors = as_vectors(decomposition)
    ks = [int(k) for k in k_range]
    if not ks or min(ks) < 2:
        raise ValueError(f"k_range must hold integers >= 2, got {ks}")
    if not 0 <= min_area < max_area <= 1:
        raise ValueError(f"need 0 <= min_area < max_area <= 1, got min_area={min_area}, max_area={max_area}")
    if not 0 < nms_iou <= 1:
        raise ValueError(f"nms_iou must lie in (0, 1], got {nms_iou}")
    from scipy.spatial.distance import cdist

    n, h, w = (vectors.sizes[d] for d in ("sample", "y", "x"))
    sizes = _image_sizes(image_sizes, n)
    ids = [str(s) for s in vectors["sample"].values]
    results = []
    for i in range(n):
        rows = np.asarray(vectors.isel(sample=i).values, dtype=np.float64).reshape(h * w, -1)
        if not np.isfinite(rows).all():
            raise ValueError(f"vectors of sample {ids[i]!r} hold NaN or infinite values; the decomposition failed there")
        features = _prepare(rows)
        masks = _filter(_candidates(features, (h, w), ks, int(seed), int(n_init)), min_area, max_area,
                        int(border_sides))
        distances = cdist(features, features)
        scores = np.array([_score(m, distances) for m in masks], dtype=np.float64)
        positive = [j for j in range(len(masks)) if np.isfinite(scores[j]) and scores[j] > 0]
        masks, scores = [masks[j] for j in positive], scores[positive]
        kept = _nms(masks, scores, float(nms_iou), int(max_proposals))
        results.append(_finish(ids[i], [masks[j] for j in kept], scores[kept], sizes[i], (h, w)))
    return results


def labels_to_proposals(
    labels: xr.DataArray,
    image_sizes: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
) -> list[InstanceProposals]:
    """Proposals from baseline label maps: label ``i >= 1`` is the ``i``-th mask, scored ``1 / i``.

    For :func:`interpret_spectral.segmentation.maskcut` (0 background, masks in
    discovery order; with ``n_masks=1`` and ``tau=0.2`` it is TokenCut's single
    object).  Empty labels give no proposal.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> labels = xr.DataArray(np.array([[[0, 1], [2, 2]]]), dims=("sample", "y", "x"),
    ...                       coords={"sample": ["a"]})
    >>> p = labels_to_proposals(labels)[0]
    >>> p.scores.tolist(), p.masks.sum(axis=(1, 2)).tolist()
    ([1.0, 0.5], [1, 2])
    """
    if not isinstance(labels, xr.DataArray) or tuple(labels.dims[-2:]) != ("y", "x"):
        raise ValueError("labels must be a DataArray (sample, y, x), as maskcut() returns")
    if "sample" not in labels.dims:
        labels = labels.expand_dims("sample")
    n, h, w = labels.shape
    sizes = _image_sizes(image_sizes, n)
    ids = [str(s) for s in labels["sample"].values] if "sample" in labels.coords else [str(i) for i in range(n)]
    results = []
    for i in range(n):
        grid = np.asarray(labels.values[i])
        numbers = [int(v) for v in np.unique(grid) if v > 0]
        masks = [grid == v for v in numbers]
        results.append(_finish(ids[i], masks, [1.0 / v for v in numbers], sizes[i], (h, w)))
    return results


def planted_instances(size: int = 12, noise: float = 0.05, seed: int = 0) -> tuple[xr.DataArray, list[np.ndarray]]:
    """Eigenvectors with two separated square objects on a background, and the objects' masks.

    Component 0 marks object A, component 1 object B (background 0 on both), plus a
    little Gaussian noise: the right instance masks are known.

    Examples
    --------
    >>> vectors, truth = planted_instances()
    >>> vectors.dims, [int(t.sum()) for t in truth]
    (('sample', 'y', 'x', 'component'), [9, 16])
    """
    rng = np.random.default_rng(seed)
    a = np.zeros((size, size), dtype=bool)
    b = np.zeros((size, size), dtype=bool)
    a[2:5, 2:5] = True
    b[size - 6: size - 2, size - 6: size - 2] = True
    values = np.stack([a, b], axis=-1).astype(np.float64) + noise * rng.standard_normal((size, size, 2))
    vectors = xr.DataArray(values[None], dims=("sample", "y", "x", "component"),
                           coords={"sample": ["planted"]}, attrs={"reference": _PAPER})
    return vectors, [a, b]

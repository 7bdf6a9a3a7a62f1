"""Segmentation from eigenvectors, and the single-affinity baselines of the paper's Table 1.

:func:`segment` turns a decomposition (``vectors (sample, y, x, component)``, as returned
by :func:`interpret_spectral.spectral.decompose` or :func:`ncut`) into label maps by
K-Means on the rows of the eigenvector matrix, choosing K per sample by silhouette
score when it is not given (Zhang, Yunis & Maire, CVPR 2024; their code sweeps
K and keeps the best ``silhouette_score``).  :func:`upsample_labels` brings token-grid
labels to image size for scoring (nearest neighbour).

Baselines read one attention site of a store (the final one by default):

- :func:`kmeans_features`: K-Means on the site's tokens (block output ``features`` or
  ``q``/``k``/``v`` with heads concatenated);
- :func:`ncut`: Normalized Cut (Shi & Malik, PAMI 2000) on one affinity, the cosine
  similarity of those tokens or the site's attention; the ``m`` smallest non-trivial
  generalised eigenvectors of ``(D - W) y = lambda D y``, returned in the layout of
  ``decompose()`` so that :func:`segment` clusters them;
- :func:`tokencut`: the TokenCut graph (Wang et al., CVPR 2022): final keys, cosine
  similarity binarised at ``tau = 0.2`` with ``eps = 1e-5`` elsewhere, ``m = 8``;
- :func:`maskcut`: MaskCut (Wang et al., CutLER, CVPR 2023): repeated NCut
  bipartitions of the TokenCut graph, each mask's tokens removed before the next.

Every result records in its ``attrs`` what was done.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import xarray as xr

from interpret_spectral.store.reader import patch_tokens, sample_ids, site_names

__all__ = [
    "segment",
    "upsample_labels",
    "ncut_eigenvectors",
    "kmeans_features",
    "ncut",
    "tokencut",
    "maskcut",
]

Components = int | slice | Sequence[int] | None
_SOURCES = ("features", "q", "k", "v")
# A binarised graph with more edges than this fraction is (nearly) complete: warn.
_COMPLETE_GRAPH_FRACTION = 0.98
_NCUT_REFERENCE = "Shi & Malik, Normalized Cuts and Image Segmentation, IEEE TPAMI 2000"
_TOKENCUT_REFERENCE = (
    "Wang et al., Self-Supervised Transformers for Unsupervised Object Discovery using "
    "Normalized Cut (TokenCut), CVPR 2022"
)
_MASKCUT_REFERENCE = (
    "Wang et al., Cut and Learn for Unsupervised Object Detection and Instance Segmentation (CutLER), CVPR 2023"
)
_SEGMENT_REFERENCE = (
    "Zhang, Yunis & Maire, Deciphering 'What' and 'Where' Visual Pathways from Spectral "
    "Clustering of Layer-Distributed Neural Representations, CVPR 2024"
)


# -- K-Means on token rows --------------------------------------------------------------
def _first_appearance(labels: np.ndarray) -> np.ndarray:
    """Relabel to 0..n-1 in order of first appearance (row-major), so ids do not depend on K-Means' order."""
    values, first = np.unique(labels, return_index=True)
    order = np.argsort(first, kind="stable")
    mapping = np.empty(values.max() + 1, dtype=np.int32)
    mapping[values[order]] = np.arange(len(values), dtype=np.int32)
    return mapping[labels]


def _silhouette(rows: np.ndarray, labels: np.ndarray) -> float:
    """sklearn's silhouette score, or NaN where it is undefined (one cluster, or one per token)."""
    from sklearn.metrics import silhouette_score

    n_labels = len(np.unique(labels))
    if not 2 <= n_labels <= len(rows) - 1:
        return float("nan")
    return float(silhouette_score(rows, labels, metric="euclidean"))


def _kmeans(rows: np.ndarray, k: int, seed: int, n_init: int, quiet: bool = False) -> np.ndarray:
    """sklearn K-Means labels; ``quiet`` silences its warning that fewer than K clusters were found
    (expected while sweeping K past the number of tight groups)."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(rows).labels_


def _cluster_rows(
    rows: np.ndarray, k: int | None, k_range: Sequence[int], seed: int, n_init: int
) -> tuple[np.ndarray, int, float]:
    """K-Means labels of ``rows`` (tokens x dims), the K used and its silhouette score."""
    n = len(rows)
    if k is not None:
        if k > n:
            raise ValueError(f"k={k} exceeds the {n} tokens of a sample; choose k <= {n}")
        labels = _kmeans(rows, k, seed, n_init)
        return _first_appearance(labels), k, _silhouette(rows, labels)
    # More clusters than distinct rows cannot be found; silhouette needs K <= n - 1.
    distinct = len(np.unique(rows, axis=0))
    candidates = [kk for kk in k_range if kk <= min(n - 1, distinct)]
    if not candidates:
        raise ValueError(
            f"no K in k_range={list(k_range)} can be scored on {n} tokens with {distinct} distinct rows "
            "(silhouette needs 2 <= K <= tokens - 1, and K-Means K <= distinct rows); pass a fixed k"
        )
    best: tuple[float, np.ndarray, int] | None = None
    for kk in candidates:
        labels = _kmeans(rows, kk, seed, n_init, quiet=True)
        score = _silhouette(rows, labels)
        if np.isnan(score):
            continue
        if best is None or score > best[0]:
            best = (score, labels, kk)
    if best is None:  # K-Means gave one cluster for every K despite >= K distinct rows
        raise RuntimeError(f"K-Means found a single cluster for every K in {candidates}; pass a fixed k")
    score, labels, kk = best
    return _first_appearance(labels), kk, score


def _check_k(k: int | None, k_range: Iterable[int]) -> list[int]:
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise ValueError(f"k must be a positive integer or None (sweep k_range by silhouette), got {k!r}")
    ks = [int(kk) for kk in k_range]
    if k is None and (not ks or min(ks) < 2):
        raise ValueError(f"k_range must hold integers >= 2 (silhouette is undefined for one cluster), got {ks}")
    return ks


def _as_vectors(decomposition: xr.Dataset | xr.DataArray) -> tuple[xr.DataArray, dict[str, Any], bool]:
    """The ``(sample, y, x, component)`` DataArray, the source attrs, and whether ``sample`` was added."""
    if isinstance(decomposition, xr.Dataset):
        if "vectors" not in decomposition.data_vars:
            raise ValueError(
                f"the Dataset has no 'vectors' variable (it holds {sorted(decomposition.data_vars)}); "
                "pass the result of decompose() or ncut(), or a DataArray (sample, y, x, component)"
            )
        vectors = decomposition["vectors"]
        attrs = dict(decomposition.attrs)
    elif isinstance(decomposition, xr.DataArray):
        vectors = decomposition
        attrs = dict(decomposition.attrs)
    else:
        raise TypeError(
            f"segment() takes an xarray Dataset with 'vectors' or a DataArray, got {type(decomposition).__name__}"
        )
    dims = set(vectors.dims)
    missing = {"y", "x", "component"} - dims
    extra = dims - {"sample", "y", "x", "component"}
    if missing or extra:
        raise ValueError(
            f"vectors must have dims (sample, y, x, component) (sample optional), got {vectors.dims}; "
            f"missing {sorted(missing)}, unexpected {sorted(extra)}"
        )
    added = "sample" not in dims
    if added:
        vectors = vectors.expand_dims("sample")
    return vectors.transpose("sample", "y", "x", "component"), attrs, added


def _component_positions(components: Components, n: int) -> list[int]:
    if components is None:
        return list(range(n))
    if isinstance(components, (int, np.integer)) and not isinstance(components, bool):
        if not 1 <= components <= n:
            raise ValueError(f"components={components} must lie in 1..{n} (the number of components)")
        return list(range(int(components)))
    if isinstance(components, slice):
        positions = list(range(n))[components]
    else:
        positions = [int(c) for c in components]
        bad = [c for c in positions if not -n <= c < n]
        if bad:
            raise ValueError(f"component positions {bad} are out of range for {n} components")
        positions = [c % n for c in positions]
    if not positions:
        raise ValueError(f"components={components!r} selects no component out of {n}")
    return positions


def segment(
    decomposition: xr.Dataset | xr.DataArray,
    k: int | None = None,
    components: Components = None,
    seed: int = 0,
    k_range: Iterable[int] = range(2, 11),
    n_init: int = 10,
) -> xr.DataArray:
    """Label every token by K-Means on the rows of its eigenvectors.

    Each token is one row of ``vectors`` over the chosen components.  With ``k=None``,
    K-Means runs for every K in ``k_range`` and the K with the highest silhouette score
    (``sklearn.metrics.silhouette_score``, Euclidean, on the same rows) is kept, per
    sample, as in the paper (Zhang, Yunis & Maire, CVPR 2024) and its code.

    Parameters
    ----------
    decomposition : xarray.Dataset or xarray.DataArray
        A Dataset with ``vectors (sample, y, x, component)`` (what ``decompose()`` and
        :func:`ncut` return) or that DataArray; ``sample`` may be absent.
    k : int, optional
        Number of clusters; ``None`` chooses it per sample by silhouette over ``k_range``.
    components : int, slice or sequence of int, optional
        Components to cluster on: the first ``n`` (int), a slice, or positions.
        Default: all.
    seed : int
        ``random_state`` of K-Means; identical seeds give identical labels.
    k_range : iterable of int
        Candidate K for the silhouette sweep (default 2..10).
    n_init : int
        K-Means restarts (fixed, so that results do not depend on sklearn's default).

    Returns
    -------
    xarray.DataArray
        ``labels (sample, y, x)`` int32, ids ``0..K-1`` numbered in order of first
        appearance (row-major); coordinates ``k (sample)`` (the K used) and
        ``silhouette (sample)`` (its score, NaN where undefined); attrs record the
        method, K selection, seed, ``n_init``, components and the source's attrs.
        Without a ``sample`` dimension in the input, none in the output.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> rows = np.repeat(np.eye(3), [6, 5, 5], axis=0).reshape(4, 4, 3)
    >>> vectors = xr.DataArray(rows, dims=("y", "x", "component"))
    >>> labels = segment(vectors)
    >>> int(labels.k), labels.values[0].tolist()
    (3, [0, 0, 0, 0])
    """
    ks = _check_k(k, k_range)
    if int(n_init) < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    vectors, source_attrs, added = _as_vectors(decomposition)
    positions = _component_positions(components, vectors.sizes["component"])
    vectors = vectors.isel(component=positions)
    n_samples, height, width = (vectors.sizes[d] for d in ("sample", "y", "x"))
    labels = np.empty((n_samples, height, width), dtype=np.int32)
    chosen = np.empty(n_samples, dtype=np.int64)
    scores = np.empty(n_samples, dtype=np.float64)
    for i in range(n_samples):
        rows = np.asarray(vectors.isel(sample=i).values, dtype=np.float64).reshape(height * width, -1)
        if not np.isfinite(rows).all():
            raise ValueError(f"vectors of sample {i} hold NaN or infinite values; the decomposition failed there")
        sample_labels, chosen[i], scores[i] = _cluster_rows(rows, k, ks, int(seed), int(n_init))
        labels[i] = sample_labels.reshape(height, width)
    coords: dict[str, Any] = {
        name: coord for name, coord in vectors.coords.items() if set(coord.dims) <= {"sample", "y", "x"}
    }
    coords["k"] = ("sample", chosen)
    coords["silhouette"] = ("sample", scores)
    attrs = {
        "method": "kmeans",
        "k_selection": "fixed" if k is not None else "silhouette",
        "k_range": ks if k is None else [int(k)],
        "seed": int(seed),
        "n_init": int(n_init),
        "components": positions,
        "reference": _SEGMENT_REFERENCE,
        "source": json.dumps(source_attrs, default=str),
    }
    result = xr.DataArray(labels, dims=("sample", "y", "x"), coords=coords, attrs=attrs, name="labels")
    return result.isel(sample=0) if added else result


# -- upsampling ---------------------------------------------------------------------------
def _size_pair(size: Any) -> tuple[int, int] | None:
    """``(H, W)`` if ``size`` is one pair of positive ints, else None."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return None
    try:
        values = list(size)
    except TypeError:
        return None
    if len(values) == 2 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        if min(values) < 1:
            raise ValueError(f"size must be positive, got {tuple(values)}")
        return int(values[0]), int(values[1])
    return None


def _nearest_index(source: int, target: int) -> np.ndarray:
    """Source cell of every target pixel: the cell containing the pixel centre."""
    return np.minimum(((np.arange(target) + 0.5) * source / target).astype(np.int64), source - 1)


def upsample_labels(
    labels: xr.DataArray | np.ndarray, size: tuple[int, int] | Sequence[tuple[int, int]]
) -> xr.DataArray | np.ndarray | list[np.ndarray]:
    """Upsample token-grid label maps to image size by nearest neighbour.

    Pixel ``(i, j)`` of an ``H x W`` image takes the label of the grid cell holding its
    centre: row ``floor((i + 0.5) * h / H)``, column ``floor((j + 0.5) * w / W)``
    (what the patch grid of an image resized to the model's input covers).

    Parameters
    ----------
    labels : xarray.DataArray or numpy.ndarray
        Label maps with the grid as the last two dimensions (``y``, ``x`` for a
        DataArray), e.g. ``(sample, y, x)`` or ``(h, w)``.
    size : (int, int) or sequence of (int, int)
        One ``(H, W)`` for all maps, or one per sample (first dimension of ``labels``).

    Returns
    -------
    xarray.DataArray, numpy.ndarray or list of numpy.ndarray
        For one size: the same type as ``labels`` with the last two dimensions of
        length ``H``, ``W`` (a DataArray keeps its other coordinates and attrs).  For
        one size per sample: a list of ``(H_i, W_i)`` arrays.

    Examples
    --------
    >>> import numpy as np
    >>> upsample_labels(np.array([[0, 1], [2, 3]]), (3, 4)).tolist()
    [[0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    """
    is_dataarray = isinstance(labels, xr.DataArray)
    if is_dataarray:
        if labels.dims[-2:] != ("y", "x"):
            raise ValueError(f"labels must end with dims (y, x), got {labels.dims}; transpose it first")
        array = labels.values
    else:
        array = np.asarray(labels)
    if array.ndim < 2:
        raise ValueError(f"labels must have at least 2 dimensions (h, w), got shape {array.shape}")
    height, width = array.shape[-2:]
    pair = _size_pair(size)
    if pair is not None:
        rows, cols = _nearest_index(height, pair[0]), _nearest_index(width, pair[1])
        out = array[..., rows[:, None], cols[None, :]]
        if not is_dataarray:
            return out
        coords = {name: c for name, c in labels.coords.items() if not {"y", "x"} & set(c.dims)}
        return xr.DataArray(out, dims=labels.dims, coords=coords, attrs=dict(labels.attrs), name=labels.name)
    sizes = [_size_pair(s) for s in size]
    if any(s is None for s in sizes):
        raise ValueError(f"size must be one (H, W) pair of ints or a sequence of such pairs, got {size!r}")
    if array.ndim != 3 or len(sizes) != array.shape[0]:
        raise ValueError(
            f"{len(sizes)} sizes for labels of shape {array.shape}: give one (H, W) per map of a (sample, y, x) stack"
        )
    return [
        array[i][_nearest_index(height, h)[:, None], _nearest_index(width, w)[None, :]]
        for i, (h, w) in enumerate(sizes)  # type: ignore[misc]
    ]


# -- Normalized Cut -------------------------------------------------------------------------
def ncut_eigenvectors(
    affinity: np.ndarray, n_eigenvectors: int, tau: float | None = None, eps: float = 1e-5
) -> tuple[np.ndarray, np.ndarray]:
    """The smallest non-trivial generalised eigenvectors of ``(D - W) y = lambda D y``.

    ``W`` is ``affinity``, binarised when ``tau`` is given (``1`` where ``W > tau``,
    ``eps`` elsewhere, as TokenCut), and ``D = diag(W 1)``.  Solved densely with
    ``scipy.linalg.eigh(D - W, D, subset_by_index=[1, m])``: the trivial eigenvector
    (constant, ``lambda = 0``) is skipped.  Equivalently, ``y = D^-1/2 u`` for the
    eigenvectors ``u`` of ``D^-1/2 W D^-1/2`` with eigenvalues ``1 - lambda``.

    Parameters
    ----------
    affinity : numpy.ndarray
        ``(N, N)`` symmetric non-negative affinity.
    n_eigenvectors : int
        Number ``m`` of eigenvectors, ``1 <= m <= N - 1``.
    tau : float, optional
        Binarisation threshold; ``None`` keeps the weights.
    eps : float
        Weight of the edges under ``tau``.

    Returns
    -------
    values : numpy.ndarray
        ``(m,)`` eigenvalues ``lambda``, ascending.
    vectors : numpy.ndarray
        ``(N, m)`` eigenvectors, ``D``-orthonormal (``Y^T D Y = I``), each with its
        largest-magnitude entry positive.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.kron(np.eye(2), np.ones((3, 3))) + 0.01
    >>> values, vectors = ncut_eigenvectors(w, 1)
    >>> np.sign(vectors[:, 0]).astype(int).tolist()
    [-1, -1, -1, 1, 1, 1]
    """
    from scipy.linalg import eigh

    w = np.array(affinity, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"affinity must be a square (N, N) matrix, got shape {w.shape}")
    n = w.shape[0]
    if isinstance(n_eigenvectors, bool) or not 1 <= int(n_eigenvectors) <= n - 1:
        raise ValueError(f"n_eigenvectors must lie in 1..{n - 1} for {n} tokens, got {n_eigenvectors}")
    if not np.isfinite(w).all():
        raise ValueError("affinity holds NaN or infinite values")
    if not np.allclose(w, w.T, rtol=1e-5, atol=1e-8 * max(1.0, float(np.abs(w).max()))):
        raise ValueError("affinity must be symmetric; symmetrise it first, e.g. (W + W.T) / 2")
    if tau is not None:
        if eps <= 0:
            raise ValueError(f"eps must be positive (the weight of edges under tau), got {eps}")
        above = w > tau
        if above.mean() > _COMPLETE_GRAPH_FRACTION:
            warnings.warn(
                f"{100 * above.mean():.1f}% of token pairs have affinity > tau={tau}: the binarised graph is "
                "(nearly) complete and its eigenvectors are arbitrary. Tokens that share a large common "
                "component (DINOv2's keys and block outputs do) need center=True, or a larger tau.",
                UserWarning,
                stacklevel=2,
            )
        w = np.where(above, 1.0, eps)
    if (w < 0).any():
        raise ValueError("affinity has negative weights; Normalized Cut needs W >= 0 (binarise with tau=)")
    degree = w.sum(axis=1)
    if (degree <= 0).any():
        raise ValueError(f"{int((degree <= 0).sum())} tokens have zero degree; Normalized Cut needs every D_ii > 0")
    values, vectors = eigh(np.diag(degree) - w, np.diag(degree), subset_by_index=[1, int(n_eigenvectors)])
    peak = np.abs(vectors).argmax(axis=0)
    vectors = vectors * np.sign(vectors[peak, np.arange(vectors.shape[1])])
    return values, vectors


# -- reading a store ------------------------------------------------------------------------
def _site(store: xr.DataTree, site: int | str) -> str:
    names = site_names(store)
    if isinstance(site, (int, np.integer)) and not isinstance(site, bool):
        if not -len(names) <= site < len(names):
            raise IndexError(f"site index {site} is out of range for the store's {len(names)} attention sites")
        return names[int(site)]
    if isinstance(site, str):
        if site not in names:
            raise KeyError(f"the store has no site {site!r}; its sites are: {', '.join(names)}")
        return site
    raise TypeError(f"site must be a forward index or a site name, got {type(site).__name__}")


def _resolve_source(store: xr.DataTree, name: str, source: str | None) -> str:
    held = set(store[name].data_vars)
    if source is None:
        source = "features" if "features" in held else "k"
    if source not in _SOURCES:
        raise ValueError(f"source must be one of {_SOURCES} (or None), got {source!r}")
    if source not in held:
        hint = " (probe with capture=(..., 'features'), or pick q, k or v)" if source == "features" else ""
        raise KeyError(f"site {name!r} holds no {source!r}; it holds {sorted(held)}{hint}")
    return source


def _timestep_selection(store: xr.DataTree, name: str, timestep: int | None) -> int | None:
    node = store[name]
    sizes = [node[var].sizes["timestep"] for var in node.data_vars if "timestep" in node[var].dims]
    has_timestep = bool(sizes)
    if has_timestep and timestep is None:
        raise ValueError(
            f"site {name!r} has a timestep dimension ({sizes[0]} timesteps); "
            "pass timestep= (a position along it)"
        )
    if not has_timestep and timestep is not None:
        raise ValueError(f"site {name!r} has no timestep dimension; pass timestep=None")
    return timestep


def _tokens(
    store: xr.DataTree, name: str, source: str, index: int, timestep: int | None, center: bool = False
) -> np.ndarray:
    """``(tokens, channels)`` float64 of one sample: features, or q/k/v with heads concatenated;
    minus the sample's mean token when ``center``."""
    values = patch_tokens(store, name, source, samples=index, timesteps=timestep).astype(np.float64)
    if source != "features":
        heads, tokens, channels = values.shape
        values = values.transpose(1, 0, 2).reshape(tokens, heads * channels)
    return values - values.mean(axis=0, keepdims=True) if center else values


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _attention_affinity(store: xr.DataTree, name: str, index: int, timestep: int | None) -> np.ndarray:
    """Attention among patch tokens: per-head softmax(q k^T * scale), heads averaged, symmetrised."""
    q = patch_tokens(store, name, "q", samples=index, timesteps=timestep).astype(np.float64)
    k = patch_tokens(store, name, "k", samples=index, timesteps=timestep).astype(np.float64)
    logits = np.einsum("hnc,hmc->hnm", q, k) * float(store[name].attrs["scale"])
    logits -= logits.max(axis=-1, keepdims=True)
    attention = np.exp(logits)
    attention /= attention.sum(axis=-1, keepdims=True)
    mean = attention.mean(axis=0)
    return (mean + mean.T) / 2


def _grid(store: xr.DataTree, name: str) -> tuple[int, int]:
    return int(store[name].attrs["grid_h"]), int(store[name].attrs["grid_w"])


def _check_store_args(store: xr.DataTree) -> list[str]:
    if not isinstance(store, xr.DataTree):
        raise TypeError(f"expected a store (xarray.DataTree from probe() or open_store()), got {type(store).__name__}")
    ids = sample_ids(store)
    if not ids:
        raise ValueError("the store holds no sample")
    return ids


# -- baselines ------------------------------------------------------------------------------
def kmeans_features(
    store: xr.DataTree,
    k: int | None = None,
    site: int | str = -1,
    source: Literal["features", "q", "k", "v"] | None = None,
    normalize: bool = True,
    center: bool = False,
    timestep: int | None = None,
    seed: int = 0,
    k_range: Iterable[int] = range(2, 11),
    n_init: int = 10,
) -> xr.DataArray:
    """K-Means on one site's tokens (the final site's features by default).

    Parameters
    ----------
    store : xarray.DataTree
        A store.
    k : int, optional
        Number of clusters; ``None`` sweeps ``k_range`` by silhouette, as :func:`segment`.
    site : int or str
        Forward index (``-1``: the last site) or name of the site.
    source : {"features", "q", "k", "v"}, optional
        Tokens to cluster: the block output ``features`` (default when captured, else
        ``"k"``), or q/k/v with heads concatenated.
    normalize : bool
        Scale every token to unit length first (cosine geometry, as the NCut graphs).
    center : bool
        Subtract the sample's mean token first (before ``normalize``).
    timestep : int, optional
        Position along ``timestep`` for stores that have one.
    seed, k_range, n_init
        As for :func:`segment`.

    Returns
    -------
    xarray.DataArray
        ``labels (sample, y, x)`` as :func:`segment` returns, attrs saying which tokens.

    Examples
    --------
    >>> labels = kmeans_features(store, k=None)  # doctest: +SKIP
    >>> labels.dims  # doctest: +SKIP
    ('sample', 'y', 'x')
    """
    ids = _check_store_args(store)
    name = _site(store, site)
    source = _resolve_source(store, name, source)
    timestep = _timestep_selection(store, name, timestep)
    height, width = _grid(store, name)
    rows = []
    for index in range(len(ids)):
        tokens = _tokens(store, name, source, index, timestep, center=center)
        rows.append(_unit_rows(tokens) if normalize else tokens)
    vectors = xr.DataArray(
        np.stack(rows).reshape(len(ids), height, width, -1),
        dims=("sample", "y", "x", "component"),
        coords={"sample": ids, "y": np.arange(height), "x": np.arange(width)},
        attrs={"method": "tokens", "site": name, "source": source, "normalize": int(bool(normalize)),
               "center": int(bool(center)),
               **({"timestep": int(timestep)} if timestep is not None else {})},
    )
    labels = segment(vectors, k=k, seed=seed, k_range=k_range, n_init=n_init)
    labels.attrs.update(
        method="kmeans_features",
        site=name,
        feature_source=source,
        normalize=int(bool(normalize)),
        center=int(bool(center)),
        reference="K-Means (sklearn.cluster.KMeans) on one layer's tokens",
    )
    return labels


def ncut(
    store: xr.DataTree,
    affinity: Literal["features", "attention"] = "features",
    tau: float | None | Literal["auto"] = "auto",
    n_eigenvectors: int = 15,
    site: int | str = -1,
    source: Literal["features", "q", "k", "v"] | None = None,
    center: bool = False,
    eps: float = 1e-5,
    timestep: int | None = None,
) -> xr.Dataset:
    """Normalized Cut on one affinity of one site: the ``m`` leading NCut eigenvectors per sample.

    ``affinity="features"``: cosine similarity of the site's tokens (``source``);
    ``affinity="attention"``: the site's attention among patch tokens,
    ``softmax(q k^T * scale)`` per head over patch tokens, heads averaged, symmetrised
    ``(A + A^T) / 2``.  The affinity is binarised at ``tau`` (``eps`` below it, as
    TokenCut) and the generalised eigenproblem ``(D - W) y = lambda D y`` is solved
    (:func:`ncut_eigenvectors`).  The paper's Table 1 baseline clusters ``m = 15``
    eigenvectors with K-Means: pass the result to :func:`segment`.

    Parameters
    ----------
    store : xarray.DataTree
        A store.
    affinity : {"features", "attention"}
        Which affinity.
    tau : float, None or "auto"
        Binarisation threshold; ``None`` keeps the weights; ``"auto"``: 0.2 for
        ``"features"`` (TokenCut's value), ``None`` for ``"attention"`` (attention
        weights are about ``1 / N``, so any fixed cosine-scale threshold would empty it).
    n_eigenvectors : int
        Number ``m`` of non-trivial eigenvectors.
    site : int or str
        Forward index (``-1``: last) or name of the site.
    source : {"features", "q", "k", "v"}, optional
        Tokens of ``affinity="features"`` (default ``features`` when captured, else ``k``).
    center : bool
        Subtract the sample's mean token before the cosine similarity.  Off by default
        (as TokenCut); DINOv2's final keys and block outputs share a component so large
        that every cosine exceeds ``tau`` and the graph is complete (a warning says
        so): centre them.  For keys centring changes no attention weight (softmax is
        invariant to a shift of all keys).
    eps : float
        Weight of edges under ``tau``.
    timestep : int, optional
        Position along ``timestep`` for stores that have one.

    Returns
    -------
    xarray.Dataset
        ``vectors (sample, y, x, component)`` (``D``-orthonormal generalised
        eigenvectors, smallest non-trivial ``lambda`` first) and ``values (sample,
        component)`` (``lambda``), attrs recording the choices: the layout of
        ``decompose()``, so :func:`segment` clusters it.

    Examples
    --------
    >>> labels = segment(ncut(store, affinity="attention"))  # doctest: +SKIP
    """
    ids = _check_store_args(store)
    if affinity not in ("features", "attention"):
        raise ValueError(f"affinity must be 'features' or 'attention', got {affinity!r}")
    name = _site(store, site)
    timestep = _timestep_selection(store, name, timestep)
    if affinity == "attention":
        if source is not None or center:
            raise ValueError(
                "source= and center= choose the tokens of affinity='features'; "
                "attention always uses q and k as recorded"
            )
        for var in ("q", "k"):
            _resolve_source(store, name, var)
        used_source = "q,k"
    else:
        used_source = _resolve_source(store, name, source)
    if tau == "auto":
        tau = 0.2 if affinity == "features" else None
    elif tau is not None and not isinstance(tau, (int, float, np.floating)):
        raise ValueError(f"tau must be a number, None or 'auto', got {tau!r}")
    height, width = _grid(store, name)
    m = int(n_eigenvectors)
    all_vectors = np.empty((len(ids), height, width, m), dtype=np.float32)
    all_values = np.empty((len(ids), m), dtype=np.float64)
    for index in range(len(ids)):
        if affinity == "attention":
            w = _attention_affinity(store, name, index, timestep)
        else:
            unit = _unit_rows(_tokens(store, name, used_source, index, timestep, center=center))
            w = unit @ unit.T
        values, vectors = ncut_eigenvectors(w, m, tau=tau, eps=eps)
        all_vectors[index] = vectors.reshape(height, width, m)
        all_values[index] = values
    attrs: dict[str, Any] = {
        "method": "ncut",
        "affinity": affinity,
        "site": name,
        "source": used_source,
        "binarized": int(tau is not None),
        "center": int(bool(center)),
        "eps": float(eps),
        "n_eigenvectors": m,
        "eigenproblem": "scipy.linalg.eigh(D - W, D, subset_by_index=[1, m]): smallest non-trivial lambda first",
        "reference": _NCUT_REFERENCE,
    }
    if tau is not None:
        attrs["tau"] = float(tau)
    if affinity == "attention":
        attrs["attention"] = "softmax(q k^T * scale) per head over patch tokens, heads averaged, (A + A^T) / 2"
    if timestep is not None:
        attrs["timestep"] = int(timestep)
    return xr.Dataset(
        {
            "vectors": (("sample", "y", "x", "component"), all_vectors),
            "values": (("sample", "component"), all_values),
        },
        coords={"sample": ids, "y": np.arange(height), "x": np.arange(width), "component": np.arange(m)},
        attrs=attrs,
    )


def tokencut(
    store: xr.DataTree,
    n_eigenvectors: int = 8,
    tau: float = 0.2,
    site: int | str = -1,
    center: bool = False,
    eps: float = 1e-5,
    timestep: int | None = None,
) -> xr.Dataset:
    """The TokenCut graph: NCut on the cosine similarity of the final keys (heads concatenated).

    TokenCut (Wang et al., CVPR 2022) binarises the key similarity at ``tau = 0.2``
    with ``eps = 1e-5`` elsewhere; here its ``m = 8`` leading non-trivial eigenvectors
    are returned for :func:`segment` (TokenCut itself bipartitions with the second
    smallest one; :func:`maskcut` does that).

    Parameters
    ----------
    store : xarray.DataTree
        A store with ``k`` at the site.
    n_eigenvectors : int
        Number ``m`` of eigenvectors.
    tau, eps : float
        Binarisation threshold and the weight under it.
    site : int or str
        Forward index (``-1``: last) or name.
    center : bool
        Subtract the sample's mean token before the cosine similarity.  Off by default
        (as TokenCut); DINOv2's final keys and block outputs share a component so large
        that every cosine exceeds ``tau`` and the graph is complete (a warning says
        so): centre them.  For keys centring changes no attention weight (softmax is
        invariant to a shift of all keys).
    timestep : int, optional
        Position along ``timestep`` for stores that have one.

    Returns
    -------
    xarray.Dataset
        As :func:`ncut`, with ``attrs["method"] = "tokencut"``.

    Examples
    --------
    >>> labels = segment(tokencut(store))  # doctest: +SKIP
    """
    result = ncut(store, affinity="features", tau=tau, n_eigenvectors=n_eigenvectors, site=site,
                  source="k", center=center, eps=eps, timestep=timestep)
    result.attrs.update(method="tokencut", reference=_TOKENCUT_REFERENCE)
    return result


def _maskcut_sample(
    tokens: np.ndarray, grid: tuple[int, int], n_masks: int, tau: float, eps: float
) -> list[np.ndarray]:
    """CutLER's ``maskcut_forward`` on one sample's tokens: a list of boolean (h, w) masks."""
    from scipy import ndimage

    height, width = grid
    unit = _unit_rows(tokens)
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
        Subtract the sample's mean token before the cosine similarity.  Off by default
        (as CutLER); DINOv2's final keys and block outputs share a component so large
        that every cosine exceeds ``tau`` and the graph is complete (a warning says
        so): centre them.  For keys centring changes no attention weight (softmax is
        invariant to a shift of all keys).
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
    ids = _check_store_args(store)
    if isinstance(n_masks, bool) or int(n_masks) < 1:
        raise ValueError(f"n_masks must be a positive integer, got {n_masks}")
    name = _site(store, site)
    source = _resolve_source(store, name, source)
    timestep = _timestep_selection(store, name, timestep)
    height, width = _grid(store, name)
    labels = np.zeros((len(ids), height, width), dtype=np.int32)
    for index in range(len(ids)):
        tokens = _tokens(store, name, source, index, timestep, center=center)
        masks = _maskcut_sample(tokens, (height, width), int(n_masks), float(tau), float(eps))
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

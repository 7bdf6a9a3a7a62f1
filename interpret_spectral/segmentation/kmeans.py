"""Segmentation from eigenvectors: K-Means on the rows of the eigenvector matrix.

:func:`segment` turns a decomposition (``vectors (sample, y, x, component)``, as
returned by :func:`interpret_spectral.decompose`, :func:`~interpret_spectral.decompose_dataset`
or :func:`~interpret_spectral.segmentation.ncut`, read through
:func:`interpret_spectral.store.decomposition.as_vectors`) into label maps by K-Means
on every token's row of eigenvector entries.  K is fixed (``k=``) or chosen per sample
by a K choice method (:mod:`interpret_spectral.segmentation.choose_k`): the paper's
silhouette sweep (``k_method="silhouette"``) or the default, which is stable across
seeds and never keeps a degenerate cluster.  With ``refine="crf"`` the labels are
upsampled to each image and refined by a dense CRF
(:func:`~interpret_spectral.segmentation.crf.dense_crf`).

Examples
--------
>>> import numpy as np, xarray as xr
>>> rows = np.repeat(np.eye(2), 8, axis=0).reshape(4, 4, 2)
>>> segment(xr.DataArray(rows, dims=("y", "x", "component")), k=2).values[:, 0].tolist()
[0, 0, 1, 1]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import xarray as xr

from interpret_spectral.spectral.threads import single_thread
from interpret_spectral.segmentation.choose_k import DEFAULT_K_METHOD, K_METHODS, choose_k, fit_kmeans, silhouette
from interpret_spectral.store.decomposition import as_vectors

__all__ = ["segment"]

Components = int | slice | Sequence[int] | None
_SEGMENT_REFERENCE = (
    "Zhang, Yunis & Maire, Deciphering 'What' and 'Where' Visual Pathways from Spectral "
    "Clustering of Layer-Distributed Neural Representations, CVPR 2024"
)
_REFINEMENTS = (None, "crf")


def _first_appearance(labels: np.ndarray) -> np.ndarray:
    """Relabel to 0..n-1 in order of first appearance (row-major), so ids do not depend on K-Means' order."""
    values, first = np.unique(labels, return_index=True)
    order = np.argsort(first, kind="stable")
    mapping = np.empty(values.max() + 1, dtype=np.int32)
    mapping[values[order]] = np.arange(len(values), dtype=np.int32)
    return mapping[labels]


def _check_k(k: int | None, k_range: Iterable[int], k_method: str) -> list[int]:
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise ValueError(f"k must be a positive integer or None (chosen per sample by k_method), got {k!r}")
    ks = sorted({int(kk) for kk in k_range})
    if k is None and (not ks or min(ks) < 2):
        raise ValueError(
            f"k_range must hold integers >= 2 (a K choice needs at least two clusters), got {list(k_range)}"
        )
    if k_method not in K_METHODS:
        raise ValueError(f"k_method must be one of {sorted(K_METHODS)}, got {k_method!r}")
    return ks


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


def _images(image: Any, n_samples: int) -> list[Any]:
    """One image per sample: a sequence of images, or one image for a single sample."""
    if image is None:
        raise ValueError("refine='crf' needs image= (one RGB image per sample, as given to probe())")
    single = hasattr(image, "convert") or (isinstance(image, np.ndarray) and image.ndim == 3)
    images = [image] if single else list(image)
    if len(images) != n_samples:
        raise ValueError(f"{len(images)} images for {n_samples} samples; give one image per sample, in order")
    return images


def _posteriors(rows: np.ndarray, centres: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(K, tokens)`` soft assignments: softmax of ``-d^2 / (2 s^2)`` over the centres.

    ``d`` is a row's distance to each K-Means centre and ``s^2`` the mean squared distance
    of the rows to their own centre (the clusters' spread), so that a row at its centre
    is confident and a row half-way between two centres is not.
    """
    squared = ((rows[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
    spread = max(float(squared[np.arange(len(rows)), labels].mean()), 1e-12)
    logits = -squared / (2.0 * spread)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return (weights / weights.sum(axis=1, keepdims=True)).T


def _crf_labels(image: Any, rows: np.ndarray, centres: np.ndarray, labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Labels of one sample at image size, refined by the dense CRF."""
    from interpret_spectral.segmentation.crf import dense_crf

    k = len(centres)
    if k < 2:
        from interpret_spectral.segmentation.crf import image_array

        return np.zeros(image_array(image).shape[:2], dtype=np.int32)
    probabilities = _posteriors(rows, centres, labels).reshape(k, *grid).astype(np.float32)
    return dense_crf(image, probabilities).argmax(axis=0)


def segment(
    decomposition: xr.Dataset | xr.DataArray,
    k: int | None = None,
    components: Components = None,
    seed: int = 0,
    k_range: Iterable[int] = range(2, 11),
    n_init: int = 10,
    *,
    k_method: str = DEFAULT_K_METHOD,
    refine: Literal["crf"] | None = None,
    image: Any = None,
) -> xr.DataArray:
    """Label every token by K-Means on the rows of its eigenvectors.

    Each token is one row of ``vectors`` over the chosen components.  With ``k=None``
    K is chosen per sample within ``k_range`` by ``k_method``:

    - ``"consensus"`` (default): for every K, 3 K-Means fits from different seeds;
      a K whose best fit leaves a cluster under 1 % of the tokens (or under 3
      tokens) is degenerate and dropped; the kept K with the highest silhouette
      score, averaged over the fits, wins.
    - ``"silhouette"``: the paper's sweep (Zhang, Yunis & Maire, CVPR 2024, and their
      code): the K with the highest ``sklearn.metrics.silhouette_score`` of one
      K-Means fit.

    See :mod:`interpret_spectral.segmentation.choose_k`.

    Parameters
    ----------
    decomposition : xarray.Dataset or xarray.DataArray
        A decomposition in the one format (what ``decompose()``, ``decompose_dataset()``
        and ``ncut()`` return) or a ``(sample, y, x, component)`` DataArray; ``sample``
        may be absent.
    k : int, optional
        Number of clusters; ``None`` chooses it per sample by ``k_method``.
    components : int, slice or sequence of int, optional
        Components to cluster on: the first ``n`` (int), a slice, or positions.
        Default: all.
    seed : int
        ``random_state`` of K-Means; identical seeds give identical labels.
    k_range : iterable of int
        Candidate K (default 2..10).
    n_init : int
        K-Means restarts (fixed, so that results do not depend on sklearn's default).
    k_method : str
        How K is chosen when ``k`` is None: one of
        :data:`~interpret_spectral.segmentation.choose_k.K_METHODS`.
    refine : {"crf"}, optional
        ``"crf"``: upsample to each image and refine with a dense CRF (STEGO's
        parameters), the unaries being the soft assignment of every token to the
        K-Means centres; needs the ``crf`` extra.
    image : image or sequence of images, optional
        With ``refine="crf"``: one RGB image (PIL or ``(H, W, 3)`` uint8) per sample,
        all the same size.

    Returns
    -------
    xarray.DataArray
        ``labels (sample, y, x)`` int32, ids ``0..K-1`` numbered in order of first
        appearance (row-major), on the token grid (or the image's pixels with
        ``refine="crf"``); coordinates ``k (sample)`` (the K used), ``k_score
        (sample)`` (the score that chose it, NaN for a fixed K) and ``silhouette
        (sample)`` (the silhouette of the K-Means labels, NaN where undefined); attrs
        record the method, K choice, seed, ``n_init``, components, refinement and the
        source's attrs.  Without a ``sample`` dimension in the input, none in the output.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> rows = np.repeat(np.eye(3), [6, 5, 5], axis=0).reshape(4, 4, 3)
    >>> vectors = xr.DataArray(rows, dims=("y", "x", "component"))
    >>> labels = segment(vectors)
    >>> int(labels.k), labels.values[0].tolist()
    (3, [0, 0, 0, 0])
    """
    ks = _check_k(k, k_range, k_method)
    if int(n_init) < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    if refine not in _REFINEMENTS:
        raise ValueError(f"refine must be None or 'crf', got {refine!r}")
    added = isinstance(decomposition, xr.DataArray) and "sample" not in decomposition.dims
    vectors = as_vectors(decomposition)
    source_attrs = dict(vectors.attrs)
    positions = _component_positions(components, vectors.sizes["component"])
    vectors = vectors.isel(component=positions)
    n_samples, height, width = (vectors.sizes[d] for d in ("sample", "y", "x"))
    images = _images(image, n_samples) if refine == "crf" else None
    maps: list[np.ndarray] = []
    chosen = np.empty(n_samples, dtype=np.int64)
    scores = np.full(n_samples, np.nan, dtype=np.float64)
    silhouettes = np.empty(n_samples, dtype=np.float64)
    for i in range(n_samples):
        rows = np.asarray(vectors.isel(sample=i).values, dtype=np.float64).reshape(height * width, -1)
        if not np.isfinite(rows).all():
            raise ValueError(f"vectors of sample {i} hold NaN or infinite values; the decomposition failed there")
        if k is not None:
            if k > len(rows):
                raise ValueError(f"k={k} exceeds the {len(rows)} tokens of a sample; choose k <= {len(rows)}")
            with single_thread():  # threads cost more than they give at these sizes
                raw, centres = fit_kmeans(rows, int(k), int(seed), int(n_init))
            chosen[i] = k
        else:
            choice = choose_k(rows, ks, k_method, seed=int(seed), n_init=int(n_init))
            raw, centres, chosen[i], scores[i] = choice.labels, choice.centres, choice.k, choice.score
        # the K choice scored its labels already (NaN: not computed, or undefined and recomputed as such)
        silhouettes[i] = choice.silhouette if k is None and np.isfinite(choice.silhouette) else silhouette(rows, raw)
        if images is not None:
            label_map = _crf_labels(images[i], rows, centres, raw, (height, width))
        else:
            label_map = raw.reshape(height, width)
        maps.append(_first_appearance(label_map.reshape(-1)).reshape(label_map.shape))
    shapes = {m.shape for m in maps}
    if len(shapes) > 1:
        raise ValueError(
            f"the images differ in size ({sorted(shapes)}), so their refined labels do not stack; "
            "segment one sample at a time, e.g. segment(decomposition.isel(sample=[i]), refine='crf', image=images[i])"
        )
    labels = np.stack(maps).astype(np.int32)
    if refine is None:
        coords: dict[str, Any] = {
            name: coord for name, coord in vectors.coords.items() if set(coord.dims) <= {"sample", "y", "x"}
        }
    else:
        coords = {name: coord for name, coord in vectors.coords.items() if set(coord.dims) <= {"sample"}}
        coords.update(y=np.arange(labels.shape[1]), x=np.arange(labels.shape[2]))
    coords.update(k=("sample", chosen), k_score=("sample", scores), silhouette=("sample", silhouettes))
    attrs = {
        "method": "kmeans",
        "k_selection": "fixed" if k is not None else k_method,
        "k_range": ks if k is None else [int(k)],
        "seed": int(seed),
        "n_init": int(n_init),
        "components": positions,
        "refine": refine or "none",
        "reference": _SEGMENT_REFERENCE,
        "source": json.dumps(source_attrs, default=str),
    }
    if refine == "crf":
        attrs["grid"] = [int(height), int(width)]
        attrs["crf_unary"] = "softmax over K-Means centres of -d^2 / (2 s^2), s^2 the mean squared distance to own centre"
    result = xr.DataArray(labels, dims=("sample", "y", "x"), coords=coords, attrs=attrs, name="labels")
    return result.isel(sample=0) if added else result

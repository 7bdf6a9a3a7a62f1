"""Normalized Cut baselines of the paper's Table 1: NCut on one affinity, and TokenCut's graph.

- :func:`ncut_eigenvectors`: the smallest non-trivial generalised eigenvectors of
  ``(D - W) y = lambda D y`` (Shi & Malik, PAMI 2000) of one affinity matrix;
- :func:`ncut`: those eigenvectors per sample for one site of a store, on the cosine
  similarity of its tokens or on its attention, as a decomposition in the one format
  (:func:`interpret_spectral.store.decomposition.make_decomposition`) that
  :func:`~interpret_spectral.segmentation.segment` clusters;
- :func:`tokencut`: the TokenCut graph (Wang et al., CVPR 2022): final keys, cosine
  similarity binarised at ``tau = 0.2`` with ``eps = 1e-5`` elsewhere, ``m = 8``.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import xarray as xr

from interpret_spectral.segmentation._tokens import attention_affinity, resolve_source, select_site, unit_rows
from interpret_spectral.store.decomposition import make_decomposition

__all__ = ["ncut_eigenvectors", "ncut", "tokencut"]

# A binarised graph with more edges than this fraction is (nearly) complete: warn.
_COMPLETE_GRAPH_FRACTION = 0.98
_NCUT_REFERENCE = "Shi & Malik, Normalized Cuts and Image Segmentation, IEEE TPAMI 2000"
_TOKENCUT_REFERENCE = (
    "Wang et al., Self-Supervised Transformers for Unsupervised Object Discovery using "
    "Normalized Cut (TokenCut), CVPR 2022"
)


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
    eigenvectors with K-Means: pass the result to :func:`~interpret_spectral.segmentation.segment`.

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
        A decomposition in the one format (``make_decomposition``, producer
        ``"ncut"``): ``vectors (sample, y, x, component)`` (``D``-orthonormal
        generalised eigenvectors, smallest non-trivial ``lambda`` first) and
        ``values (sample, component)`` (``lambda``), attrs recording the choices;
        :func:`~interpret_spectral.segmentation.segment` clusters it.

    Examples
    --------
    >>> labels = segment(ncut(store, affinity="attention"))  # doctest: +SKIP
    """
    if affinity not in ("features", "attention"):
        raise ValueError(f"affinity must be 'features' or 'attention', got {affinity!r}")
    if affinity == "attention" and (source is not None or center):
        raise ValueError(
            "source= and center= choose the tokens of affinity='features'; "
            "attention always uses q and k as recorded"
        )
    chosen = select_site(store, site, "q" if affinity == "attention" else source, timestep)
    ids, name, timestep = chosen.ids, chosen.name, chosen.timestep
    if affinity == "attention":
        resolve_source(store, name, "k")
        used_source = "q,k"
    else:
        used_source = chosen.source
    if tau == "auto":
        tau = 0.2 if affinity == "features" else None
    elif tau is not None and not isinstance(tau, (int, float, np.floating)):
        raise ValueError(f"tau must be a number, None or 'auto', got {tau!r}")
    height, width = chosen.grid
    m = int(n_eigenvectors)
    all_vectors = np.empty((len(ids), height, width, m), dtype=np.float32)
    all_values = np.empty((len(ids), m), dtype=np.float64)
    for index in range(len(ids)):
        if affinity == "attention":
            w = attention_affinity(store, name, index, timestep)
        else:
            unit = unit_rows(chosen.tokens(index, center=center))
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
    return make_decomposition(all_vectors, all_values, ids, producer="ncut", attrs=attrs)


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
    are returned for :func:`~interpret_spectral.segmentation.segment` (TokenCut itself bipartitions with the second
    smallest one; :func:`~interpret_spectral.segmentation.maskcut` does that).

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
        Subtract the sample's mean token before the cosine similarity (off by default,
        as TokenCut; see :func:`ncut` for when to centre).
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


"""Feature K-Means baseline: K-Means on one site's tokens (the paper's Table 1 row).

Examples
--------
>>> labels = kmeans_features(store, k=None)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
import xarray as xr

from interpret_spectral.segmentation._tokens import select_site, unit_rows
from interpret_spectral.segmentation.choose_k import DEFAULT_K_METHOD
from interpret_spectral.segmentation.kmeans import segment

__all__ = ["kmeans_features"]


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
    *,
    k_method: str = DEFAULT_K_METHOD,
) -> xr.DataArray:
    """K-Means on one site's tokens (the final site's features by default).

    Parameters
    ----------
    store : xarray.DataTree
        A store.
    k : int, optional
        Number of clusters; ``None`` chooses it within ``k_range`` by ``k_method``,
        as :func:`~interpret_spectral.segmentation.segment`.
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
    seed, k_range, n_init, k_method
        As for :func:`~interpret_spectral.segmentation.segment`.

    Returns
    -------
    xarray.DataArray
        ``labels (sample, y, x)`` as :func:`~interpret_spectral.segmentation.segment` returns, attrs saying which tokens.

    Examples
    --------
    >>> labels = kmeans_features(store, k=None)  # doctest: +SKIP
    >>> labels.dims  # doctest: +SKIP
    ('sample', 'y', 'x')
    """
    chosen = select_site(store, site, source, timestep)
    ids, name, source, timestep = chosen.ids, chosen.name, chosen.source, chosen.timestep
    height, width = chosen.grid
    rows = []
    for index in range(len(ids)):
        tokens = chosen.tokens(index, center=center)
        rows.append(unit_rows(tokens) if normalize else tokens)
    vectors = xr.DataArray(
        np.stack(rows).reshape(len(ids), height, width, -1),
        dims=("sample", "y", "x", "component"),
        coords={"sample": ids, "y": np.arange(height), "x": np.arange(width)},
        attrs={"method": "tokens", "site": name, "source": source, "normalize": int(bool(normalize)),
               "center": int(bool(center)),
               **({"timestep": int(timestep)} if timestep is not None else {})},
    )
    labels = segment(vectors, k=k, seed=seed, k_range=k_range, n_init=n_init, k_method=k_method)
    labels.attrs.update(
        method="kmeans_features",
        site=name,
        feature_source=source,
        normalize=int(bool(normalize)),
        center=int(bool(center)),
        reference="K-Means (sklearn.cluster.KMeans) on one layer's tokens",
    )
    return labels


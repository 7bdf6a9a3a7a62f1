"""Choosing the number of segments K per sample, and the K-Means fits behind it.

Two methods, by name (:data:`K_METHODS`), each given the token rows of one sample
and the candidate K:

- ``"silhouette"``: the paper's sweep (Zhang, Yunis & Maire, CVPR 2024, and their
  code): one K-Means fit (``n_init`` restarts) per K, the K with the highest
  ``sklearn.metrics.silhouette_score`` wins.  On real images it mostly picks the
  largest K of the range and sometimes K = 2 with one cluster of a few tokens.
- ``"consensus"``: :data:`N_RUNS` K-Means fits per K, from seeds drawn from ``seed``;
  a K whose best fit (lowest inertia) leaves a cluster under
  :data:`MIN_CLUSTER_FRACTION` of the tokens (1 %) or under 3 tokens is degenerate
  and dropped; the K with the highest silhouette averaged over the fits wins, so one
  lucky seed does not decide.

Every method returns a :class:`KChoice`: the labels and centres of the K-Means fit of
the chosen K, K, and the score that chose it.  Which method is the default
(:data:`DEFAULT_K_METHOD`) was decided by ``benchmarks/bench_k_choice.py``.

Examples
--------
>>> import numpy as np
>>> rows = np.repeat(np.eye(3), 20, axis=0) + 0.01 * np.random.default_rng(0).normal(size=(60, 3))
>>> choice = choose_k(rows, range(2, 6), "consensus")
>>> choice.k, choice.score > 0.9
(3, True)
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "KChoice",
    "K_METHODS",
    "DEFAULT_K_METHOD",
    "MIN_CLUSTER_FRACTION",
    "N_RUNS",
    "choose_k",
    "fit_kmeans",
    "silhouette",
    "Silhouettes",
]

#: A cluster under this fraction of a sample's tokens, or under 3 tokens, is degenerate.
MIN_CLUSTER_FRACTION = 0.01
#: Independent K-Means fits (each with ``n_init`` restarts) per K for "consensus".
N_RUNS = 3
#: Largest number of rows whose distance matrix :class:`Silhouettes` holds (float64: 128 MiB).
MAX_SHARED_ROWS = 4096


@dataclasses.dataclass(frozen=True, eq=False)
class KChoice:
    """The chosen K of one sample and its K-Means fit.

    Attributes
    ----------
    labels : numpy.ndarray
        ``(tokens,)`` cluster ids of the fit, ``0..k-1`` in K-Means' order.
    centres : numpy.ndarray
        ``(k, dims)`` cluster centres.
    k : int
        The chosen number of clusters.
    score : float
        The score that chose it (silhouette, or mean silhouette over the fits).
    silhouette : float
        The silhouette of ``labels`` (NaN where undefined or not computed).
    """

    labels: np.ndarray
    centres: np.ndarray
    k: int
    score: float
    silhouette: float = float("nan")


def silhouette(rows: np.ndarray, labels: np.ndarray) -> float:
    """The Euclidean silhouette score (as ``sklearn.metrics.silhouette_score``), NaN where undefined.

    Undefined: one cluster, or one cluster per token.  See :class:`Silhouettes` for
    scoring many labellings of the same rows.

    Examples
    --------
    >>> import numpy as np
    >>> silhouette(np.array([[0.0], [0.1], [5.0], [5.1]]), np.array([0, 0, 1, 1])) > 0.9
    True
    """
    return Silhouettes(rows)(labels)


class Silhouettes:
    """Silhouette scores of many labellings of the same rows, sharing one distance matrix.

    The Euclidean distances between the rows are computed once (``O(n^2)`` memory);
    each score then costs one ``(n, n) x (n, K)`` product: for every token the sum of its
    distances to each cluster.  Equal to ``sklearn.metrics.silhouette_score`` (tokens of
    singleton clusters score 0) to float rounding; beyond :data:`MAX_SHARED_ROWS` rows
    sklearn's chunked implementation is called instead.

    Examples
    --------
    >>> import numpy as np
    >>> score = Silhouettes(np.array([[0.0], [0.1], [5.0], [5.1]]))
    >>> round(score(np.array([0, 0, 1, 1])), 4), score(np.zeros(4, dtype=int))
    (0.98, nan)
    """

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = np.asarray(rows, dtype=np.float64)
        self._distances: np.ndarray | None = None

    def __call__(self, labels: np.ndarray) -> float:
        labels = np.asarray(labels)
        ids, codes = np.unique(labels, return_inverse=True)
        n, k = len(self.rows), len(ids)
        if not 2 <= k <= n - 1:
            return float("nan")
        if n > MAX_SHARED_ROWS:
            from sklearn.metrics import silhouette_score

            return float(silhouette_score(self.rows, labels, metric="euclidean"))
        if self._distances is None:
            from scipy.spatial.distance import cdist

            self._distances = cdist(self.rows, self.rows)
        codes = codes.reshape(-1)
        sizes = np.bincount(codes, minlength=k).astype(np.float64)
        sums = self._distances @ np.eye(k)[codes]  # (n, k): distance of every token to every cluster
        own = sizes[codes] - 1.0
        intra = np.divide(sums[np.arange(n), codes], own, out=np.zeros(n), where=own > 0)
        means = sums / sizes
        means[np.arange(n), codes] = np.inf
        inter = means.min(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = (inter - intra) / np.maximum(intra, inter)
        return float(np.mean(np.where(own > 0, np.nan_to_num(scores), 0.0)))


def fit_kmeans(rows: np.ndarray, k: int, seed: int, n_init: int, quiet: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Labels and centres of ``sklearn.cluster.KMeans(k, n_init=n_init, random_state=seed)``.

    ``quiet`` silences sklearn's warning that fewer than K distinct clusters were found
    (expected while sweeping K past the number of tight groups).

    Examples
    --------
    >>> import numpy as np
    >>> labels, centres = fit_kmeans(np.array([[0.0], [0.1], [5.0], [5.1]]), 2, seed=0, n_init=2)
    >>> sorted(np.round(centres[:, 0], 2).tolist())
    [0.05, 5.05]
    """
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", ConvergenceWarning)
        model = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(rows)
    return model.labels_, model.cluster_centers_


def _by_silhouette(rows: np.ndarray, candidates: Sequence[int], seed: int, n_init: int) -> KChoice:
    best: KChoice | None = None
    scorer = Silhouettes(rows)
    for k in candidates:
        labels, centres = fit_kmeans(rows, k, seed, n_init, quiet=True)
        score = scorer(labels)
        if not np.isnan(score) and (best is None or score > best.score):
            best = KChoice(labels, centres, k, score, score)
    if best is None:  # K-Means gave one cluster for every K despite >= K distinct rows
        raise RuntimeError(f"K-Means found a single cluster for every K in {list(candidates)}; pass a fixed k")
    return best


@dataclasses.dataclass(frozen=True, eq=False)
class _Runs:
    """:data:`N_RUNS` K-Means fits of one K."""

    k: int
    labels: list[np.ndarray]
    centres: list[np.ndarray]
    inertia: list[float]
    scores: list[float] = dataclasses.field(default_factory=list)

    @property
    def best(self) -> int:
        return int(np.argmin(self.inertia))

    def degenerate(self, n_tokens: int) -> bool:
        smallest = np.bincount(self.labels[self.best], minlength=self.k).min()
        return bool(smallest < max(3, math.ceil(MIN_CLUSTER_FRACTION * n_tokens)))

    def mean_silhouette(self, scorer: Silhouettes) -> float:
        """Silhouette averaged over the runs: one lucky seed does not decide."""
        self.scores[:] = [scorer(labels) for labels in self.labels]
        return float(np.nanmean(self.scores)) if not np.isnan(self.scores).all() else float("nan")

    def choice(self, score: float) -> KChoice:
        best = self.best
        return KChoice(self.labels[best], self.centres[best], self.k, score,
                       self.scores[best] if self.scores else float("nan"))


def _runs(rows: np.ndarray, candidates: Sequence[int], seed: int, n_init: int) -> list[_Runs]:
    """:data:`N_RUNS` K-Means fits (``n_init`` restarts each) for every candidate K, seeded from ``seed``."""
    seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=N_RUNS)
    out = []
    for k in candidates:
        labels, centres, inertia = [], [], []
        for run_seed in seeds:
            run_labels, run_centres = fit_kmeans(rows, k, int(run_seed), n_init, quiet=True)
            labels.append(run_labels)
            centres.append(run_centres)
            inertia.append(float(((rows - run_centres[run_labels]) ** 2).sum()))
        out.append(_Runs(k, labels, centres, inertia))
    return out


def _kept(runs: list[_Runs], n_tokens: int) -> list[_Runs]:
    """The non-degenerate K, or (when every K is degenerate) the K whose smallest cluster is largest."""
    kept = [r for r in runs if not r.degenerate(n_tokens)]
    if kept:
        return kept
    return [max(runs, key=lambda r: (np.bincount(r.labels[r.best], minlength=r.k).min(), -r.k))]


def _by_consensus(rows: np.ndarray, candidates: Sequence[int], seed: int, n_init: int) -> KChoice:
    scorer = Silhouettes(rows)
    scored = [(r.mean_silhouette(scorer), r) for r in _kept(_runs(rows, candidates, seed, n_init), len(rows))]
    scored = [(s, r) for s, r in scored if not np.isnan(s)]
    if not scored:
        raise RuntimeError(f"K-Means found a single cluster for every K in {list(candidates)}; pass a fixed k")
    score, best = max(scored, key=lambda pair: pair[0])
    return best.choice(score)


#: K choice methods by name: ``f(rows, candidates, seed, n_init) -> KChoice``.
K_METHODS: dict[str, Callable[[np.ndarray, Sequence[int], int, int], KChoice]] = {
    "silhouette": _by_silhouette,
    "consensus": _by_consensus,
}
#: The method :func:`~interpret_spectral.segmentation.segment` uses unless told otherwise.
DEFAULT_K_METHOD = "consensus"


def choose_k(rows: np.ndarray, k_range: Sequence[int], method: str = DEFAULT_K_METHOD,
             seed: int = 0, n_init: int = 10) -> KChoice:
    """Choose K for one sample's token rows and fit K-Means with it.

    Parameters
    ----------
    rows : numpy.ndarray
        ``(tokens, dims)`` rows to cluster.
    k_range : sequence of int
        Candidate K, each >= 2; those above the number of distinct rows (or tokens - 1)
        are skipped.
    method : str
        One of :data:`K_METHODS`.
    seed : int
        Seed of the K-Means starts.
    n_init : int
        K-Means restarts per K.

    Returns
    -------
    KChoice

    Examples
    --------
    >>> import numpy as np
    >>> rows = np.repeat(np.eye(2), 10, axis=0)
    >>> choose_k(rows, [2, 3], "silhouette").k
    2
    """
    if method not in K_METHODS:
        raise ValueError(f"k_method must be one of {sorted(K_METHODS)}, got {method!r}")
    n = len(rows)
    distinct = len(np.unique(rows, axis=0))
    candidates = [int(k) for k in k_range if 2 <= int(k) <= min(n - 1, distinct)]
    if not candidates:
        raise ValueError(
            f"no K in k_range={list(k_range)} can be scored on {n} tokens with {distinct} distinct rows "
            "(a K choice needs 2 <= K <= tokens - 1, and K-Means K <= distinct rows); pass a fixed k"
        )
    from interpret_spectral.spectral.threads import single_thread

    # One thread for BLAS and OpenMP: at these sizes (a few thousand rows, tens of fits) threads
    # cost more than they give, and on a busy machine many times more.
    with single_thread():
        return K_METHODS[method](rows, candidates, int(seed), int(n_init))

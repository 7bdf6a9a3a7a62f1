"""Top-k neighbour graphs across images, for the dataset-level decomposition.

Every token keeps its ``intra`` most similar tokens of its own image and its ``inter``
most similar tokens of the other images; :func:`walk_matrix` turns them into the
symmetrised, row-normalised sparse random walk ``D^-1 (A + A^T) / 2``.

The neighbours within an image are always exact.  Across images, brute force is
``O(N^2)`` in tokens (1,000 images of 16x16 tokens: 2.5e13 multiply-adds per site of
384 channels), so past :data:`EXACT_LIMIT` tokens (``neighbours="auto"``) they are
searched approximately with FAISS (an inverted-file index of ``4 sqrt(N)`` k-means
lists over the keys, ``nprobe`` lists searched per query, each image's own tokens
excluded inside the search, OpenMP-parallel over the queries of an image); FAISS is
the ``scale`` extra.  ``tests/test_neighbours.py`` measures its recall@k against brute
force and ``benchmarks/bench_dataset_scale.py`` at 256k tokens.

Examples
--------
>>> import torch
>>> x = torch.nn.functional.normalize(torch.randn(8, 3), dim=1)
>>> values, indices = intra_inter_topk(x, x, tokens_per_image=4, intra=1, inter=1)
>>> walk_matrix(values.numpy(), indices.numpy(), -1.0).shape
(8, 8)
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["NEIGHBOUR_METHODS", "EXACT_LIMIT", "DEFAULT_NPROBE", "intra_inter_topk", "walk_matrix"]

# Query chunks hold at most this many similarities (float32: 64 MiB).
_CHUNK_ELEMENTS = 1 << 24
#: How cross-image neighbours are found: brute force, FAISS, or by size.
NEIGHBOUR_METHODS: tuple[str, ...] = ("auto", "exact", "approximate")
#: ``neighbours="auto"`` searches approximately above this many tokens (e.g. 256 images of 16x16).
EXACT_LIMIT = 65536
#: Inverted lists searched per query by the approximate search.
DEFAULT_NPROBE = 24


@torch.no_grad()
def intra_inter_topk(
    query: torch.Tensor | np.ndarray,
    key: torch.Tensor | np.ndarray,
    tokens_per_image: int,
    intra: int,
    inter: int,
    chunk_size: int | None = None,
    *,
    neighbours: str = "auto",
    exact_limit: int = EXACT_LIMIT,
    nprobe: int = DEFAULT_NPROBE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k neighbours of every token within its own image and across the other images.

    Tokens are stacked image after image: rows ``i * tokens_per_image`` to
    ``(i + 1) * tokens_per_image - 1`` belong to image ``i``.  The similarity of
    token ``a`` to token ``b`` is ``query[a] @ key[b]``.  For every token this keeps
    the ``intra`` largest similarities to the *other* tokens of its image and the
    ``inter`` largest to tokens of the other images (both capped by the number of
    candidates).  Similarities are computed for chunks of whole images of queries
    at a time, so that memory stays at about ``chunk_size x N`` floats.

    Parameters
    ----------
    query, key : torch.Tensor or numpy.ndarray
        ``(N, D)`` features, ``N`` a multiple of ``tokens_per_image`` (unit-normalise
        them first for cosine similarities).
    tokens_per_image : int
        Tokens of every image.
    intra, inter : int
        Neighbours kept within the image and across images.
    chunk_size : int, optional
        Query tokens per chunk, rounded down to whole images (at least one image);
        by default chunks hold about 16 M similarities.
    neighbours : {"auto", "exact", "approximate"}
        How the cross-image neighbours are found: brute force, FAISS's inverted-file
        search (see the module docstring; needs ``faiss-cpu``), or ``"auto"``:
        approximate above ``exact_limit`` tokens when FAISS is installed.
    exact_limit : int
        See ``neighbours``.
    nprobe : int
        Inverted lists searched per query (approximate search): more is slower and
        closer to exact.

    Returns
    -------
    values : torch.Tensor
        ``(N, k_intra + k_inter)`` similarities, the intra neighbours first, each
        group in decreasing order.
    indices : torch.Tensor
        ``(N, k_intra + k_inter)`` int64 token indices of those neighbours.

    Examples
    --------
    >>> import torch
    >>> x = torch.nn.functional.normalize(torch.randn(12, 4), dim=1)
    >>> values, indices = intra_inter_topk(x, x, tokens_per_image=4, intra=2, inter=3)
    >>> values.shape, bool((indices[:4, :2] < 4).all()), bool((indices[:4, 2:] >= 4).all())
    (torch.Size([12, 5]), True, True)
    """
    query = torch.as_tensor(query)
    key = torch.as_tensor(key)
    if query.ndim != 2 or key.ndim != 2 or query.shape != key.shape:
        raise ValueError(
            f"query and key must be (N, D) of the same shape, got {tuple(query.shape)} and {tuple(key.shape)}"
        )
    if query.dtype != key.dtype:
        key = key.to(query.dtype)
    n = int(tokens_per_image)
    total = int(query.shape[0])
    if n < 1 or total % n:
        raise ValueError(f"{total} tokens are not whole images of tokens_per_image={tokens_per_image}")
    if intra < 0 or inter < 0 or intra + inter < 1:
        raise ValueError(f"intra and inter must be >= 0 and not both 0, got intra={intra}, inter={inter}")
    n_images = total // n
    k_intra = min(int(intra), n - 1)
    k_inter = min(int(inter), total - n)
    if neighbours not in NEIGHBOUR_METHODS:
        raise ValueError(f"neighbours must be one of {NEIGHBOUR_METHODS}, got {neighbours!r}")
    if _approximate(neighbours, total, exact_limit) and k_inter:
        return _approximate_topk(query, key, n, k_intra, k_inter, int(nprobe), chunk_size)
    if chunk_size is None:
        images_per_chunk = max(1, _CHUNK_ELEMENTS // (n * total))
    else:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        images_per_chunk = max(1, int(chunk_size) // n)
    values = torch.empty(total, k_intra + k_inter, dtype=query.dtype)
    indices = torch.empty(total, k_intra + k_inter, dtype=torch.int64)
    self_loops = torch.eye(n, dtype=torch.bool)
    for first in range(0, n_images, images_per_chunk):
        last = min(first + images_per_chunk, n_images)
        rows = slice(first * n, last * n)
        chunk = last - first
        sims = (query[rows] @ key.T).view(chunk, n, n_images, n)
        own = torch.arange(chunk)
        images = torch.arange(first, last)
        if k_intra:
            block = sims[own, :, images, :]  # (chunk, n, n): each image against itself
            block = block.masked_fill(self_loops, float("-inf"))
            v, i = block.topk(k_intra, dim=-1)
            values[rows, :k_intra] = v.reshape(-1, k_intra)
            indices[rows, :k_intra] = (i + images.view(-1, 1, 1) * n).reshape(-1, k_intra)
        if k_inter:
            sims[own, :, images, :] = float("-inf")  # the intra block above is a copy
            v, i = sims.view(chunk * n, total).topk(k_inter, dim=-1)
            values[rows, k_intra:] = v
            indices[rows, k_intra:] = i
    return values, indices


def walk_matrix(values: np.ndarray, indices: np.ndarray, threshold: float) -> sp.csr_matrix:
    """Row-normalised symmetrised sparse graph of top-k neighbours: ``D^-1 (A + A^T) / 2``.

    Similarities not above ``threshold`` are dropped; a token left without neighbours
    gets an empty row.

    Examples
    --------
    >>> import numpy as np
    >>> walk_matrix(np.array([[0.9], [0.9]]), np.array([[1], [0]]), 0.1).toarray().tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    n = values.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), values.shape[1])
    v = values.reshape(-1).astype(np.float64)
    c = indices.reshape(-1)
    keep = v > threshold
    affinity = sp.csr_matrix((v[keep], (rows[keep], c[keep])), shape=(n, n))
    affinity = ((affinity + affinity.T) * 0.5).tocsr()
    degree = np.asarray(affinity.sum(axis=1)).ravel()
    inverse = np.divide(1.0, degree, out=np.zeros_like(degree), where=degree > 0)
    return (sp.diags(inverse) @ affinity).tocsr()


def _approximate(neighbours: str, total: int, exact_limit: int) -> bool:
    """Whether to search the cross-image neighbours approximately (FAISS)."""
    if neighbours == "exact" or (neighbours == "auto" and total <= exact_limit):
        return False
    try:
        import faiss  # noqa: F401
    except ImportError:
        if neighbours == "approximate":
            raise ImportError(
                "neighbours='approximate' needs FAISS: pip install 'interpret-spectral[scale]' (faiss-cpu), "
                "or pass neighbours='exact'"
            ) from None
        import warnings

        warnings.warn(f"{total} tokens: brute-force neighbours are O(N^2); install faiss-cpu "
                      "('interpret-spectral[scale]') for the approximate search", stacklevel=3)
        return False
    return True


def _intra_topk(query: torch.Tensor, key: torch.Tensor, n: int, k: int, chunk_size: int | None,
                values: torch.Tensor, indices: torch.Tensor) -> None:
    """Exact top-``k`` within every image, a block of images at a time, into ``values``/``indices[:, :k]``."""
    n_images = query.shape[0] // n
    per_chunk = max(1, (_CHUNK_ELEMENTS if chunk_size is None else int(chunk_size) * n) // (n * n))
    self_loops = torch.eye(n, dtype=torch.bool)
    for first in range(0, n_images, per_chunk):
        last = min(first + per_chunk, n_images)
        rows = slice(first * n, last * n)
        block = query[rows].view(-1, n, query.shape[1]) @ key[rows].view(-1, n, key.shape[1]).transpose(1, 2)
        v, i = block.masked_fill_(self_loops, float("-inf")).topk(k, dim=-1)
        values[rows, :k] = v.reshape(-1, k)
        indices[rows, :k] = (i + torch.arange(first, last).view(-1, 1, 1) * n).reshape(-1, k)


@torch.no_grad()
def _approximate_topk(query: torch.Tensor, key: torch.Tensor, n: int, k_intra: int, k_inter: int, nprobe: int,
                      chunk_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact intra neighbours, FAISS inverted-file inter neighbours (own image excluded in the search)."""
    import faiss

    total, width = query.shape
    values = torch.empty(total, k_intra + k_inter, dtype=query.dtype)
    indices = torch.empty(total, k_intra + k_inter, dtype=torch.int64)
    if k_intra:
        _intra_topk(query, key, n, k_intra, chunk_size, values, indices)
    keys = np.ascontiguousarray(key.numpy(), dtype=np.float32)
    queries = np.ascontiguousarray(query.numpy(), dtype=np.float32)
    lists = int(max(1, min(4 * math.sqrt(total), total // 39)))
    quantizer = faiss.IndexFlatIP(width)
    index = faiss.IndexIVFFlat(quantizer, width, lists, faiss.METRIC_INNER_PRODUCT)
    train = np.random.default_rng(0).choice(total, size=min(total, 40 * lists), replace=False)
    index.train(keys[np.sort(train)])
    index.add(keys)
    for first in range(0, total, n):  # one image's queries at a time: its own tokens are excluded in the search
        outside = faiss.IDSelectorNot(faiss.IDSelectorRange(first, first + n))
        params = faiss.SearchParametersIVF(sel=outside, nprobe=min(nprobe, lists))
        found, ids = index.search(queries[first:first + n], k_inter, params=params)
        missing = ids < 0  # fewer than k_inter candidates in the probed lists
        found[missing], ids[missing] = -np.inf, 0
        values[first:first + n, k_intra:] = torch.from_numpy(found).to(values.dtype)
        indices[first:first + n, k_intra:] = torch.from_numpy(ids)
    return values, indices

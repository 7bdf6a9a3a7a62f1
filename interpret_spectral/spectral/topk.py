"""Top-k neighbour graphs across images, for the dataset-level decomposition.

Every token keeps its ``intra`` most similar tokens of its own image and its ``inter``
most similar tokens of the other images; :func:`walk_matrix` turns them into the
symmetrised, row-normalised sparse random walk ``D^-1 (A + A^T) / 2``.

The neighbours within an image are always exact.  Across images, brute force is
``O(N^2)`` in tokens (1,000 images of 16x16 tokens: 2.5e13 multiply-adds per site of
384 channels), so past :data:`EXACT_LIMIT` tokens (``neighbours="auto"``) they are
searched approximately (:func:`~interpret_spectral.spectral.ivf.grouped_ivf_topk`: an
inverted file of ``sqrt(N)`` lists from FAISS's k-means over the keys, queries grouped
by their nearest list and compared with the keys of the ``nprobe`` lists nearest to
the group by one matrix product, each image's own tokens masked out); FAISS is the
``scale`` extra.  ``tests/test_neighbours.py`` and ``tests/test_ivf.py`` measure its
recall@k against brute force and ``benchmarks/bench_dataset_scale.py`` at 256k tokens.  With a Dask
``client`` the brute-force search runs in row blocks on its cluster
(:mod:`interpret_spectral.spectral.blocks`), with the same result; the approximate
search stays in this process.

Examples
--------
>>> import torch
>>> x = torch.nn.functional.normalize(torch.randn(8, 3), dim=1)
>>> values, indices = intra_inter_topk(x, x, tokens_per_image=4, intra=1, inter=1)
>>> walk_matrix(values.numpy(), indices.numpy(), -1.0).shape
(8, 8)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from interpret_spectral.spectral.blocks import blocked_topk, exact_block
from interpret_spectral.spectral.ivf import DEFAULT_GROUP_NPROBE, grouped_ivf_topk

__all__ = [
    "NEIGHBOUR_METHODS", "EXACT_LIMIT", "DEFAULT_NPROBE", "intra_inter_topk", "walk_matrix", "images_per_chunk",
]

# Query chunks hold at most this many similarities (float32: 64 MiB).
_CHUNK_ELEMENTS = 1 << 24
#: How cross-image neighbours are found: brute force, FAISS, or by size.
NEIGHBOUR_METHODS: tuple[str, ...] = ("auto", "exact", "approximate")
#: ``neighbours="auto"`` searches approximately above this many tokens (e.g. 256 images of 16x16).
EXACT_LIMIT = 65536
#: Inverted lists searched per group of queries by the approximate search.
DEFAULT_NPROBE = DEFAULT_GROUP_NPROBE


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
    client: Any = None,
    block_size: int | None = None,
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
    client : distributed.Client, optional
        Compute the brute-force search in row blocks on this Dask cluster
        (:func:`~interpret_spectral.spectral.blocks.blocked_topk`): the result is
        identical to the one-process search.  The approximate search always runs in
        this process (FAISS's index is built once over all keys and is OpenMP-parallel
        already), with or without a client.
    block_size : int, optional
        With ``client``: query tokens per task, rounded down to whole chunks; by default
        about four tasks per worker.

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
    per_chunk = images_per_chunk(n, total, chunk_size)
    if client is not None:
        return blocked_topk(client, query, key, n, k_intra, k_inter, per_chunk, block_size)
    return exact_block(query, key, n, 0, n_images, k_intra, k_inter, per_chunk)


def images_per_chunk(tokens_per_image: int, total: int, chunk_size: int | None) -> int:
    """Whole images of queries per chunk of the brute-force search (at least one).

    Examples
    --------
    >>> images_per_chunk(256, 256 * 1000, None), images_per_chunk(256, 256 * 1000, 1000)
    (1, 3)
    """
    if chunk_size is None:
        return max(1, _CHUNK_ELEMENTS // (tokens_per_image * total))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return max(1, int(chunk_size) // tokens_per_image)


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


def _approximate_topk(query: torch.Tensor, key: torch.Tensor, n: int, k_intra: int, k_inter: int, nprobe: int,
                      chunk_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact intra neighbours; inter neighbours by the grouped inverted-file search (own image excluded)."""
    total = query.shape[0]
    values = torch.empty(total, k_intra + k_inter, dtype=query.dtype)
    indices = torch.empty(total, k_intra + k_inter, dtype=torch.int64)
    if k_intra:
        _intra_topk(query, key, n, k_intra, chunk_size, values, indices)
    found, ids = grouped_ivf_topk(query, key, n, k_inter, nprobe=nprobe)
    values[:, k_intra:] = found.to(values.dtype)
    indices[:, k_intra:] = ids
    return values, indices

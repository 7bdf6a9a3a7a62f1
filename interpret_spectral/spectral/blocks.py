"""The brute-force top-k neighbour search, a block of images at a time, here or on a Dask cluster.

:func:`exact_block` is the brute-force search of
:func:`~interpret_spectral.spectral.topk.intra_inter_topk`: for chunks of whole images
of queries, their similarities to every key and the top-k of each row.  The chunks
are independent, so :func:`blocked_topk` hands runs of them ("blocks") to the workers
of a ``distributed.Client``:

- the keys ``(N, D)`` are sent once per search to every worker
  (``client.scatter(keys, broadcast=True)``); the queries, when they are not the keys
  themselves (``"qk"`` graphs), are scattered once, one block per task;
- every task runs :func:`exact_block` over its images, chunk by chunk (memory per
  task: the keys, one chunk of similarities of at most 64 MiB, and its block's
  ``rows x k`` results), and returns its ``(values, indices)``;
- the client writes the blocks into the result in order.

Blocks start on the chunk boundaries of the one-process search, so every task
computes the very same matrix products and ``topk`` calls as the one-process search:
the result is identical, ties included.

The features travel from the client rather than being read by the workers from the
store: they are the graph kind's unit features (any registered kind, plugins
included), the store may be an in-memory tree, and the client holds one site's
features already to build the sparse graph, so the only cost is one copy of the keys
per worker and site (1,000 images at 16 x 16 x 384 channels: 0.4 GB).

This module never imports ``distributed``: ``client`` is any object with the
``distributed.Client`` methods used here (``scatter``, ``submit``, ``status``,
``scheduler_info``).

Examples
--------
>>> import torch
>>> from distributed import Client, LocalCluster  # doctest: +SKIP
>>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # doctest: +SKIP
>>> x = torch.nn.functional.normalize(torch.randn(4096, 64), dim=1)  # doctest: +SKIP
>>> values, indices = blocked_topk(client, x, x, 64, 5, 10, per_chunk=4)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["exact_block", "check_client", "block_images", "blocked_topk"]

#: Default number of tasks per worker (load balance against per-task overhead).
TASKS_PER_WORKER = 4


@torch.no_grad()
def exact_block(query: torch.Tensor, key: torch.Tensor, n: int, first: int, last: int, k_intra: int, k_inter: int,
                per_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force top-k of the queries of images ``first`` to ``last - 1`` against every key.

    ``query`` holds the rows of those images only (``(last - first) * n``), ``key`` all
    ``N`` rows.  Chunks start at ``first`` and every ``per_chunk`` images after it, so a
    block that starts on a chunk boundary of the whole search computes exactly the same
    chunks (the same products, the same ties) as the whole search does.

    Examples
    --------
    >>> x = torch.nn.functional.normalize(torch.randn(12, 4), dim=1)
    >>> whole = exact_block(x, x, 4, 0, 3, 2, 3, per_chunk=1)
    >>> part = exact_block(x[4:], x, 4, 1, 3, 2, 3, per_chunk=1)
    >>> torch.equal(whole[0][4:], part[0]), torch.equal(whole[1][4:], part[1])
    (True, True)
    """
    total = int(key.shape[0])
    n_images = total // n
    rows_here = (last - first) * n
    values = torch.empty(rows_here, k_intra + k_inter, dtype=query.dtype)
    indices = torch.empty(rows_here, k_intra + k_inter, dtype=torch.int64)
    self_loops = torch.eye(n, dtype=torch.bool)
    for start in range(first, last, per_chunk):
        stop = min(start + per_chunk, last)
        rows = slice((start - first) * n, (stop - first) * n)
        chunk = stop - start
        sims = (query[rows] @ key.T).view(chunk, n, n_images, n)
        own = torch.arange(chunk)
        images = torch.arange(start, stop)
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


def check_client(client: Any) -> int:
    """Check that ``client`` is a running Dask client with workers; return its number of workers.

    Raises
    ------
    TypeError
        When ``client`` has not the ``distributed.Client`` methods.
    RuntimeError
        When it is closed (or closing) or its cluster has no workers.

    Examples
    --------
    >>> check_client(object())
    Traceback (most recent call last):
    ...
    TypeError: client must be a distributed.Client (with scatter, submit and scheduler_info), got object
    """
    if not all(callable(getattr(client, name, None)) for name in ("scatter", "submit", "scheduler_info")):
        raise TypeError("client must be a distributed.Client (with scatter, submit and scheduler_info), "
                        f"got {type(client).__name__}")
    status = str(getattr(client, "status", "running"))
    if status != "running":
        raise RuntimeError(f"the Dask client is {status!r}, not running: pass an open distributed.Client, "
                           "or client=None to find the neighbours in this process")
    workers = len(client.scheduler_info().get("workers", {}))
    if workers < 1:
        raise RuntimeError("the Dask cluster has no workers: start some (or wait for them), "
                           "or pass client=None to find the neighbours in this process")
    return workers


def block_images(n_images: int, per_chunk: int, workers: int, block_size: int | None, tokens_per_image: int) -> int:
    """Images per task: a whole number of chunks, about ``TASKS_PER_WORKER`` tasks per worker by default.

    ``block_size`` (query tokens per task) is rounded down to whole chunks, at least one.

    Examples
    --------
    >>> block_images(100, per_chunk=3, workers=2, block_size=None, tokens_per_image=16)
    15
    >>> block_images(100, per_chunk=3, workers=2, block_size=16 * 7, tokens_per_image=16)
    6
    """
    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
            raise ValueError(f"block_size must be an integer >= 1 (query tokens per task), got {block_size!r}")
        chunks = max(1, int(block_size) // (tokens_per_image * per_chunk))
    else:
        n_chunks = -(-n_images // per_chunk)
        chunks = max(1, -(-n_chunks // (TASKS_PER_WORKER * workers)))
    return chunks * per_chunk


def _block_task(key: np.ndarray, query: np.ndarray | None, n: int, first: int, last: int, k_intra: int,
                k_inter: int, per_chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """On a worker: the top-k of images ``first`` to ``last - 1`` (queries: ``query``, or the keys' rows)."""
    keys = torch.from_numpy(key)
    queries = keys[first * n:last * n] if query is None else torch.from_numpy(query)
    values, indices = exact_block(queries, keys, n, first, last, k_intra, k_inter, per_chunk)
    return values.numpy(), indices.numpy()


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def blocked_topk(client: Any, query: torch.Tensor, key: torch.Tensor, n: int, k_intra: int, k_inter: int,
                 per_chunk: int, block_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force intra/inter top-k on a Dask cluster, identical to the one-process search.

    Parameters
    ----------
    client : distributed.Client
        A running client whose workers can import ``interpret_spectral``.
    query, key : torch.Tensor
        ``(N, D)`` features of the same dtype, image after image.
    n : int
        Tokens per image.
    k_intra, k_inter : int
        Neighbours kept within the image and across images (already capped by the
        number of candidates).
    per_chunk : int
        Images per chunk of similarities (:func:`~interpret_spectral.spectral.topk.images_per_chunk`).
    block_size : int, optional
        Query tokens per task (rounded down to whole chunks); see :func:`block_images`.

    Returns
    -------
    values, indices : torch.Tensor
        As :func:`~interpret_spectral.spectral.topk.intra_inter_topk`.

    Examples
    --------
    >>> values, indices = blocked_topk(client, x, x, 64, 5, 10, per_chunk=4)  # doctest: +SKIP
    >>> values.shape  # doctest: +SKIP
    torch.Size([4096, 15])
    """
    workers = check_client(client)
    total = int(key.shape[0])
    n_images = total // n
    per_block = block_images(n_images, per_chunk, workers, block_size, n)
    starts = list(range(0, n_images, per_block))
    keys = key.detach().cpu().contiguous().numpy()
    # hash=False: a key of its own for this call.  With content-hashed keys, the same array scattered
    # by an earlier call whose futures were just released could be dropped under this call's tasks
    # ("lost dependencies", seen in the suite).
    key_future = client.scatter(keys, broadcast=True, hash=False)
    if _shares_storage(query, key):
        query_futures: list[Any] = [None] * len(starts)
    else:
        queries = query.detach().cpu().contiguous().numpy()
        query_futures = client.scatter([queries[s * n:min(s + per_block, n_images) * n] for s in starts], hash=False)
    futures: list[Any] = [
        client.submit(_block_task, key_future, part, n, s, min(s + per_block, n_images), k_intra, k_inter,
                      per_chunk, pure=False)
        for s, part in zip(starts, query_futures)
    ]
    del query_futures  # each block's queries are released once its task is done
    values = torch.empty(total, k_intra + k_inter, dtype=query.dtype)
    indices = torch.empty(total, k_intra + k_inter, dtype=torch.int64)
    for j, s in enumerate(starts):
        v, i = futures[j].result()
        futures[j] = None  # the worker drops the block once it is copied here
        rows = slice(s * n, min(s + per_block, n_images) * n)
        values[rows] = torch.from_numpy(v)
        indices[rows] = torch.from_numpy(i)
    del key_future
    return values, indices

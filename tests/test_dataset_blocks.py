"""The dataset-level kNN graph in row blocks on a real Dask LocalCluster (2 worker processes).

The blocks must give exactly the one-process neighbours (values, indices, ties), and
``decompose_dataset(..., client=)`` exactly the one-process decomposition.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interpret_spectral.spectral import decompose_dataset
from interpret_spectral.spectral.blocks import block_images, check_client
from interpret_spectral.spectral.topk import intra_inter_topk
from interpret_spectral.synthetic import planted_store

pytest.importorskip("distributed", reason="dask.distributed (the scale extra) is not installed")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           memory_limit=0, env={"OMP_NUM_THREADS": "1"})
    with Client(cluster) as held:
        yield held
    cluster.close()


def _features(n_images: int, tokens: int, width: int, seed: int, levels: int | None = None) -> torch.Tensor:
    """Unit features; with ``levels``, coordinates drawn from a few values so that many similarities tie."""
    generator = torch.Generator().manual_seed(seed)
    if levels is None:
        x = torch.randn(n_images * tokens, width, generator=generator)
    else:
        x = torch.randint(0, levels, (n_images * tokens, width), generator=generator).float() + 1.0
    return torch.nn.functional.normalize(x, dim=1)


@pytest.mark.parametrize(
    ("case", "intra", "inter", "chunk_size", "block_size"),
    [
        ("vv", 5, 10, None, None),  # query is the key: workers slice the scattered keys
        ("qk", 3, 7, 16 * 3, 16 * 7),  # queries scattered per block; blocks of 2 chunks, a short last block
        ("ties", 4, 12, 16 * 2, None),  # many equal similarities: ties broken as in one process
        ("vv", 0, 9, 16, 16),  # inter only, one image per chunk and per task
        ("qk", 15, 0, None, None),  # intra only: every candidate of the image
    ],
)
def test_blocks_on_the_cluster_equal_the_one_process_search(client, case, intra, inter, chunk_size, block_size):
    key = _features(23, 16, 12, seed=1, levels=2 if case == "ties" else None)
    query = _features(23, 16, 12, seed=2) if case == "qk" else key
    expected = intra_inter_topk(query, key, 16, intra, inter, chunk_size=chunk_size, neighbours="exact")
    found = intra_inter_topk(query, key, 16, intra, inter, chunk_size=chunk_size, neighbours="exact",
                             client=client, block_size=block_size)
    if case == "ties":  # the test means something: many rows hold ties among their kept neighbours
        assert (expected[0][:, intra:-1] == expected[0][:, intra + 1:]).any(dim=1).float().mean() > 0.5
    assert torch.equal(found[0], expected[0])
    assert torch.equal(found[1], expected[1])


def test_blocks_with_two_torch_threads_in_this_process_still_equal(client):
    """The workers run one thread each; the one-process search here runs two."""
    x = _features(40, 32, 24, seed=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = intra_inter_topk(x, x, 32, 6, 8, chunk_size=32 * 5, neighbours="exact")
    finally:
        torch.set_num_threads(threads)
    found = intra_inter_topk(x, x, 32, 6, 8, chunk_size=32 * 5, neighbours="exact", client=client)
    assert torch.equal(found[0], expected[0]) and torch.equal(found[1], expected[1])


def test_decompose_dataset_on_the_cluster_equals_one_process(client, tmp_path):
    store = planted_store(n_samples=10, grids=((8, 8), (4, 4)), n_groups=3, seed=5, path=tmp_path / "planted.h5")
    options = dict(n_components=4, intra=6, inter=6, grid=8, solver="exact", progress=False, neighbours="exact")
    for graph in ("vv", "qk"):
        alone = decompose_dataset(store, graph=graph, **options)
        blocks = decompose_dataset(store, graph=graph, client=client, **options)
        np.testing.assert_allclose(blocks["values"].values, alone["values"].values, rtol=1e-10, atol=1e-12)
        a = alone["vectors"].values.reshape(-1, 4).astype(np.float64)
        b = blocks["vectors"].values.reshape(-1, 4).astype(np.float64)
        signs = np.sign((a * b).sum(axis=0))
        np.testing.assert_allclose(b * signs, a, atol=1e-6)
        assert list(blocks["sample"].values) == list(alone["sample"].values)


def test_a_closed_client_is_one_clear_error(client):
    from distributed import Client

    closed = Client(client.scheduler.address)
    closed.close()
    store = planted_store(n_samples=3, grids=((4, 4),), seed=0)
    with pytest.raises(RuntimeError, match=r"the Dask client is 'closed', not running.*client=None"):
        decompose_dataset(store, graph="vv", n_components=2, grid=4, solver="exact", progress=False, client=closed)
    with pytest.raises(RuntimeError, match="not running"):
        intra_inter_topk(torch.ones(8, 2), torch.ones(8, 2), 4, 1, 1, neighbours="exact", client=closed)
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        decompose_dataset(store, graph="vv", n_components=2, grid=4, solver="exact", progress=False,
                          client="tcp://127.0.0.1:8786")
    with pytest.raises(ValueError, match="client= applies to full-graph solvers"):
        decompose_dataset(store, graph="vv", n_components=2, grid=4, solver="adam", progress=False, client=client)
    assert check_client(client) == 2


def test_block_sizes_are_whole_chunks():
    assert block_images(10, per_chunk=4, workers=8, block_size=None, tokens_per_image=16) == 4
    assert block_images(10, per_chunk=1, workers=1, block_size=16 * 3 + 5, tokens_per_image=16) == 3
    assert block_images(10, per_chunk=4, workers=1, block_size=1, tokens_per_image=16) == 4  # at least one chunk
    with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
        block_images(10, per_chunk=1, workers=1, block_size=0, tokens_per_image=16)

"""Dataset-level decomposition: planted cross-image structure, chunked top-k, checkpoint and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.linalg import subspace_angles
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

import interpret_spectral.spectral.dataset_graphs as dataset_graphs
from interpret_spectral.spectral.dataset import decompose_dataset
from interpret_spectral.spectral.eq4 import QuadraticForms, SparseGraph, SparseProduct
from interpret_spectral.spectral.topk import intra_inter_topk
from interpret_spectral.capture.contract import AttentionSite
from interpret_spectral.store.writer import create_store

SIDE = 6  # 6 x 6 patch grid: four 3 x 3 quadrants, nine 2 x 2 blocks
N_CLASSES = 3
N_QUADRANTS = 4


def planted_store(n_images: int = 12, heads: int = 2, head_dim: int = 8, n_sites: int = 2, noise: float = 0.3,
                  seed: int = 0, path=None, timesteps=None):
    """A store whose values carry a token class shared across images and whose q/k carry position only.

    Every image paints its nine 2 x 2 blocks with random classes (so classes are
    independent of position); ``v`` is the class's embedding plus noise, ``q`` and
    ``k`` are the embedding of the token's quadrant plus independent noise.  Each
    site (and each of ``timesteps``, coordinate values, when given) gets fresh noise
    and a CLS token of pure noise.

    Returns the store, the class of every token ``(n_images, SIDE * SIDE)`` and its quadrant.
    """
    rng = np.random.default_rng(seed)
    width = heads * head_dim
    n = SIDE * SIDE
    rows, cols = np.divmod(np.arange(n), SIDE)
    quadrant = (rows >= SIDE // 2) * 2 + (cols >= SIDE // 2)
    class_embedding = rng.standard_normal((N_CLASSES, width))
    position_embedding = rng.standard_normal((N_QUADRANTS, width))
    classes = np.stack([
        np.kron(rng.integers(0, N_CLASSES, (SIDE // 2, SIDE // 2)), np.ones((2, 2), int)).reshape(-1)
        for _ in range(n_images)
    ])
    sites = [
        AttentionSite(f"blocks.{i}.attn", f"blocks.{i}.attn", i, heads, head_dim, head_dim**-0.5, (SIDE, SIDE),
                      ("cls",) + ("patch",) * n)
        for i in range(n_sites)
    ]
    extra = None if timesteps is None else {"timestep": list(timesteps)}
    writer = create_store(sites, path=path, attrs={"model": "planted"}, extra_dims=extra)

    def tokens(embedding: np.ndarray) -> np.ndarray:
        steps = 1 if timesteps is None else len(timesteps)
        patch = embedding + noise * rng.standard_normal((steps, *embedding.shape))
        sequence = np.concatenate([rng.standard_normal((steps, 1, width)), patch], axis=1)
        sequence = sequence.reshape(steps, n + 1, heads, head_dim).transpose(0, 2, 1, 3)
        return sequence if timesteps is None else sequence[None]

    for s in range(n_images):
        writer.append([f"img{s:02d}"], {
            site.name: {"q": tokens(position_embedding[quadrant]), "k": tokens(position_embedding[quadrant]),
                        "v": tokens(class_embedding[classes[s]])}
            for site in sites
        })
    return writer.close(), classes, np.tile(quadrant, (n_images, 1))


@pytest.fixture(scope="module")
def planted():
    return planted_store()


@pytest.fixture(scope="module")
def solved(planted):
    """``solved(graph, solver)``: the decomposition of the planted store, computed once per module."""
    cache = {}

    def solve(graph: str, solver: str):
        if (graph, solver) not in cache:
            cache[graph, solver] = decompose_dataset(planted[0], graph=graph, **(ADAM if solver == "adam" else EXACT))
        return cache[graph, solver]

    return solve


def kmeans_ari(vectors, labels: np.ndarray, k: int) -> float:
    features = np.asarray(vectors).reshape(-1, vectors.shape[-1])
    predicted = KMeans(k, n_init=10, random_state=0).fit_predict(features)
    return adjusted_rand_score(labels.reshape(-1), predicted)


ADAM = dict(n_components=4, intra=5, inter=5, batch_size=4, epochs=30, lr=0.1, grid=SIDE, progress=False)
EXACT = dict(n_components=4, intra=5, inter=5, grid=SIDE, solver="exact", progress=False)


# -- top-k --------------------------------------------------------------------------------
def dense_intra_inter(query: torch.Tensor, key: torch.Tensor, n: int, intra: int, inter: int):
    """Reference: the full similarity matrix, masked, sorted row by row."""
    total = query.shape[0]
    sims = query @ key.T
    image = torch.arange(total) // n
    same = image[:, None] == image[None, :]
    own = sims.masked_fill(~same | torch.eye(total, dtype=torch.bool), float("-inf"))
    other = sims.masked_fill(same, float("-inf"))
    k_intra, k_inter = min(intra, n - 1), min(inter, total - n)
    vi, ii = own.sort(dim=1, descending=True)
    vo, io = other.sort(dim=1, descending=True)
    return (torch.cat([vi[:, :k_intra], vo[:, :k_inter]], dim=1),
            torch.cat([ii[:, :k_intra], io[:, :k_inter]], dim=1))


@pytest.mark.parametrize("chunk_size", [1, 7, 20, None])
@pytest.mark.parametrize(("intra", "inter"), [(3, 4), (10, 0), (0, 50), (6, 28)])
def test_chunked_topk_equals_dense_reference(chunk_size, intra, inter):
    generator = torch.Generator().manual_seed(1)
    n, images = 7, 5
    query = torch.randn(n * images, 6, generator=generator)
    key = torch.randn(n * images, 6, generator=generator)
    values, indices = intra_inter_topk(query, key, n, intra, inter, chunk_size=chunk_size)
    expected_values, expected_indices = dense_intra_inter(query, key, n, intra, inter)
    assert values.shape == expected_values.shape == (n * images, min(intra, n - 1) + min(inter, n * (images - 1)))
    torch.testing.assert_close(values, expected_values)
    assert torch.equal(indices, expected_indices)


def test_topk_rejects_partial_images():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="whole images"):
        intra_inter_topk(x, x, tokens_per_image=4, intra=1, inter=1)


# -- planted structure ------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["adam", "exact"])
def test_vv_separates_classes_and_qk_separates_positions(planted, solved, solver):
    _, classes, quadrants = planted
    what = solved("vv", solver)["vectors"]
    where = solved("qk", solver)["vectors"]
    assert kmeans_ari(what, classes, N_CLASSES) > 0.9
    assert kmeans_ari(where, quadrants, N_QUADRANTS) > 0.9
    # and each pathway is blind to the other's structure
    assert kmeans_ari(what, quadrants, N_QUADRANTS) < 0.1
    assert kmeans_ari(where, classes, N_CLASSES) < 0.1


@pytest.mark.parametrize("solver", ["adam", "exact"])
def test_output_contract(solved, solver):
    result = solved("vv", solver)
    vectors = result["vectors"]
    assert vectors.dims == ("sample", "y", "x", "component")
    assert vectors.shape == (12, SIDE, SIDE, 4)
    assert list(result["sample"].values) == [f"img{s:02d}" for s in range(12)]
    flat = vectors.values.reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(flat.T @ flat, np.eye(4), atol=1e-5)  # Eq. 8 over all tokens of all samples
    values = result["values"].values
    assert np.all(np.diff(values) <= 1e-12)
    largest = np.abs(flat).argmax(axis=0)
    assert np.all(flat[largest, np.arange(4)] > 0)
    assert result.attrs["solver"] == solver and result.attrs["graph"] == "vv"


@pytest.mark.parametrize("graph", ["vv", "qk"])
def test_exact_and_adam_span_the_same_planted_subspace(solved, graph):
    groups = N_CLASSES if graph == "vv" else N_QUADRANTS
    adam = solved(graph, "adam")["vectors"].values.reshape(-1, 4)
    exact = solved(graph, "exact")["vectors"].values.reshape(-1, 4)
    angles = np.degrees(subspace_angles(adam[:, :groups], exact[:, :groups]))
    assert angles.max() < 20.0, angles


@pytest.mark.parametrize("options", [ADAM, EXACT], ids=["adam", "exact"])
def test_resampling_to_a_finer_grid_keeps_the_structure(planted, options):
    store, classes, _ = planted
    result = decompose_dataset(store, graph="vv", **{**options, "grid": 2 * SIDE})
    assert result["vectors"].shape[1:3] == (2 * SIDE, 2 * SIDE)
    coarse = result["vectors"].values[:, ::2, ::2, :]
    assert kmeans_ari(coarse, classes, N_CLASSES) > 0.9


def test_timesteps_are_graphs_of_their_own():
    store, classes, _ = planted_store(timesteps=[999, 500])
    both = decompose_dataset(store, graph="vv", **EXACT)
    assert json.loads(both.attrs["sites"]) == [
        "blocks.0.attn@t=999", "blocks.0.attn@t=500", "blocks.1.attn@t=999", "blocks.1.attn@t=500"
    ]
    one = decompose_dataset(store, graph="vv", timesteps=500, **EXACT)
    assert json.loads(one.attrs["sites"]) == ["blocks.0.attn@t=500", "blocks.1.attn@t=500"]
    assert kmeans_ari(one["vectors"], classes, N_CLASSES) > 0.9
    with pytest.raises(KeyError, match="timestep 7"):
        decompose_dataset(store, graph="vv", timesteps=7, **EXACT)


def test_sparse_autograd_functions_have_exact_gradients():
    rng = np.random.default_rng(0)
    matrix = sp.random(7, 5, density=0.5, random_state=1, format="csr")
    symmetric = sp.random(5, 5, density=0.5, random_state=2, format="csr")
    symmetric = ((symmetric + symmetric.T) * 0.5).tocsr()
    x = torch.tensor(rng.standard_normal((5, 3)), dtype=torch.float64, requires_grad=True)
    quadratic = SparseGraph(symmetric).sym_matmul
    assert torch.autograd.gradcheck(lambda t: SparseProduct.apply(t, matrix), (x,))
    assert torch.autograd.gradcheck(lambda t: QuadraticForms.apply(t, quadratic)[0], (x,))
    forms = QuadraticForms.apply(x, quadratic)[0].detach().numpy()
    np.testing.assert_allclose(forms, np.einsum("ik,ij,jk->k", x.detach().numpy(), symmetric.toarray(),
                                                x.detach().numpy()))


# -- streaming ----------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [ADAM, EXACT], ids=["adam", "exact"])
def test_store_is_read_in_small_pieces(tmp_path, monkeypatch, options):
    store, _, _ = planted_store(n_images=12, path=tmp_path / "planted.h5")
    reads: list[tuple[str, int]] = []
    original = dataset_graphs.patch_tokens

    def spy(tree, site, var, samples=slice(None), timesteps=None):
        assert isinstance(samples, slice) and samples.stop is not None, "read contiguous runs of samples"
        reads.append((site, samples.stop - samples.start))
        return original(tree, site, var, samples=samples, timesteps=timesteps)

    monkeypatch.setattr(dataset_graphs, "patch_tokens", spy)
    monkeypatch.setattr(dataset_graphs, "_READ_SAMPLES", 5)
    decompose_dataset(store, graph="qk", **{**options, "epochs": 2})
    assert reads and max(count for _, count in reads) <= 5
    # one site at a time: all reads of a site come before any read of the next (within one pass)
    sites = [site for site, _ in reads]
    changes = sum(a != b for a, b in zip(sites, sites[1:]))
    passes = 2 if options is ADAM else 1  # two epochs (the Ritz step reuses the last), or one graph
    assert changes == 2 * passes - 1
    store.close()


# -- checkpoint and resume ------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(planted, tmp_path, monkeypatch, suffix):
    store, _, _ = planted
    options = {**ADAM, "epochs": 4, "seed": 3}
    reference = decompose_dataset(store, graph="qk", **options)

    path = tmp_path / f"state{suffix}"
    original = SparseGraph.sym_matmul
    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        # 5 steps x 2 sites per minibatch, 3 minibatches per epoch: stop inside minibatch 9, the
        # last of the third epoch; the last save (checkpoint_every=2) was after minibatch 8
        if calls["n"] == 10 * 8 + 1:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(SparseGraph, "sym_matmul", interrupting)
    with pytest.raises(KeyboardInterrupt):
        decompose_dataset(store, graph="qk", checkpoint=path, checkpoint_every=2, **options)
    monkeypatch.setattr(SparseGraph, "sym_matmul", original)
    assert path.exists() and not list(tmp_path.glob("*.tmp"))

    resumed = decompose_dataset(store, graph="qk", checkpoint=path, checkpoint_every=2, **options)
    np.testing.assert_allclose(resumed["vectors"].values, reference["vectors"].values, atol=1e-6)
    np.testing.assert_allclose(resumed["values"].values, reference["values"].values, atol=1e-9)

    # a finished checkpoint reproduces the result without training
    monkeypatch.setattr(SparseGraph, "sym_matmul", None)
    again = decompose_dataset(store, graph="qk", checkpoint=path, **options)
    np.testing.assert_allclose(again["vectors"].values, reference["vectors"].values, atol=1e-6)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_unreadable_checkpoint_is_refused(planted, tmp_path, suffix):
    path = tmp_path / f"state{suffix}"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a decompose_dataset checkpoint"):
        decompose_dataset(planted[0], graph="vv", checkpoint=path, **ADAM)


def test_checkpoint_with_other_settings_is_refused(planted, tmp_path):
    store, _, _ = planted
    path = tmp_path / "state.safetensors"
    decompose_dataset(store, graph="vv", checkpoint=path, **{**ADAM, "epochs": 1})
    with pytest.raises(ValueError, match="intra"):
        decompose_dataset(store, graph="vv", checkpoint=path, **{**ADAM, "epochs": 1, "intra": 3})


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"graph": "kq"}, "graph must be"),
        ({"solver": "lobpcg"}, "solver must be"),
        ({"intra": 0, "inter": 0}, "no edges"),
        ({"n_components": 12 * 36, "grid": SIDE}, "n_components"),
        ({"solver": "exact", "checkpoint": "x.npz"}, "solver='adam' only"),
        ({"checkpoint": "x.pt"}, "safetensors"),
        ({"batch_size": 1}, "at least 2 samples"),
        ({"threshold": 1.5}, "threshold"),
    ],
)
def test_bad_options_are_refused(planted, options, message):
    store, _, _ = planted
    with pytest.raises(ValueError, match=message):
        decompose_dataset(store, **{"progress": False, **options})


def test_store_without_values_is_refused():
    site = AttentionSite("a", "a", 0, 1, 2, 1.0, (2, 2), ("patch",) * 4)
    writer = create_store([site], capture=("q", "k"))
    writer.append(["s0", "s1"], {"a": {v: np.ones((2, 1, 4, 2)) for v in "qk"}})
    with pytest.raises(ValueError, match="graph='vv' needs v"):
        decompose_dataset(writer.close(), graph="vv", grid=2, progress=False)

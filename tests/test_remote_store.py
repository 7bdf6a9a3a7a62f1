"""Stores at fsspec URLs, read-only: one zarr store and a sharded store of zarr shards.

A tiny random-init timm ViT (2 blocks, 2 x 2 patch grid) probes four random tensors into one
zarr store and into a sharded store of two zarr shards on the local disk; both are copied
into fsspec's ``memory://`` filesystem (standing in for ``s3://`` / ``gs://``: the same code
reads them) and opened by URL.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

pytest.importorskip("zarr", minversion="3")
pytest.importorskip("dask")
pytest.importorskip("timm")
fsspec = pytest.importorskip("fsspec")

IDS = ["s0", "s1", "s2", "s3"]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """One zarr store, a sharded store of zarr shards, and an HDF5 store, written locally."""
    import timm
    import torch

    from interpret_spectral import probe
    from interpret_spectral.store.shards import create_sharded_store, seal_sharded_store, shard_path

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=0).eval()
    images = torch.randn(len(IDS), 3, 32, 32)
    root = tmp_path_factory.mktemp("remote")
    with torch.no_grad():
        probe(model, images, out=root / "one.zarr", sample_ids=IDS, progress=False).close()
        probe(model, images, out=root / "one.h5", sample_ids=IDS, progress=False).close()
        create_sharded_store(root / "store", IDS, shard_size=2, shard_format="zarr")
        for i in range(2):
            probe(model, images[2 * i:2 * i + 2], out=shard_path(root / "store", i), sample_ids=IDS[2 * i:2 * i + 2],
                  progress=False).close()
    assert seal_sharded_store(root / "store")["complete"]
    return root


@pytest.fixture
def bucket(local):
    """A fresh copy of the local stores in memory://<bucket>/, removed afterwards."""
    fs = fsspec.filesystem("memory")
    name = f"bucket-{uuid.uuid4().hex[:8]}"
    for store in ("one.zarr", "store", "one.h5"):
        fs.put(str(local / store), f"/{name}/{store}", recursive=(local / store).is_dir())
    yield f"memory://{name}"
    fs.rm(f"/{name}", recursive=True)


def _assert_same(a, b) -> None:
    """Every node, variable (dims, dtype, values, attributes) and attribute of two opened stores is the same."""
    assert [n.path for n in a.subtree] == [n.path for n in b.subtree]
    for node in a.subtree:
        other = b[node.path]
        variables = node.to_dataset(inherit=False).variables
        assert list(variables) == list(other.to_dataset(inherit=False).variables), node.path
        for name, variable in variables.items():
            theirs = other[name].variable
            assert (theirs.dims, theirs.dtype) == (variable.dims, variable.dtype), (node.path, name)
            np.testing.assert_array_equal(theirs.values, variable.values, err_msg=f"{node.path}/{name}")
            assert set(theirs.attrs) == set(variable.attrs), (node.path, name)
        assert set(node.attrs) - {"source"} == set(other.attrs) - {"source"}, node.path
        for key, value in node.attrs.items():
            if key != "source":
                np.testing.assert_array_equal(np.asarray(other.attrs[key]), np.asarray(value), err_msg=f"{node.path} {key}")


def test_zarr_store_at_a_url_reads_as_the_local_store(local, bucket):
    from interpret_spectral import decompose, open_store, validate_store
    from interpret_spectral.store.shards import store_fingerprint

    remote, here = open_store(f"{bucket}/one.zarr"), open_store(local / "one.zarr")
    validate_store(remote)
    assert int(remote.attrs["complete"]) == 1 and int(remote.attrs["samples_written"]) == len(IDS)
    _assert_same(here, remote)
    assert store_fingerprint(f"{bucket}/one.zarr") == store_fingerprint(local / "one.zarr")
    a = decompose(remote, graph="qk", n_components=3, progress=False)
    b = decompose(here, graph="qk", n_components=3, progress=False)
    np.testing.assert_array_equal(a["vectors"].values, b["vectors"].values)
    np.testing.assert_array_equal(a["values"].values, b["values"].values)


def test_sharded_store_of_zarr_shards_at_a_url_reads_as_the_local_one(local, bucket):
    from interpret_spectral import decompose, open_store
    from interpret_spectral.store.shards import missing_shards

    remote, here = open_store(f"{bucket}/store"), open_store(local / "store")
    assert remote["blocks.0.attn"]["q"].chunks[0] == (1, 1, 1, 1)  # lazily, one sample per Dask chunk
    assert remote.attrs["source"] == f"{bucket}/store" and int(remote.attrs["shards"]) == 2
    assert int(remote.attrs["complete"]) == 1 and int(remote.attrs["samples_requested"]) == len(IDS)
    _assert_same(here, remote)
    assert missing_shards(f"{bucket}/store") == []
    a = decompose(remote, graph="vv", n_components=3, progress=False)
    b = decompose(here, graph="vv", n_components=3, progress=False)
    np.testing.assert_array_equal(a["vectors"].values, b["vectors"].values)


def test_a_missing_shard_at_a_url_leaves_an_incomplete_store(bucket):
    from interpret_spectral import open_store
    from interpret_spectral.store.reader import require_complete
    from interpret_spectral.store.format import StoreError

    fsspec.filesystem("memory").rm(f"{bucket.split('://')[1]}/store/shard-00001.zarr", recursive=True)
    store = open_store(f"{bucket}/store")
    assert [str(s) for s in store["sample"].values] == IDS[:2]
    assert (int(store.attrs["samples_written"]), int(store.attrs["complete"])) == (2, 0)
    with pytest.raises(StoreError, match="holds 2 of 4 samples"):
        require_complete(store)


def test_a_flipped_byte_in_a_chunk_at_a_url_is_an_integrity_error(bucket):
    from interpret_spectral import open_store
    from interpret_spectral.store.format import StoreIntegrityError

    fs = fsspec.filesystem("memory")
    chunk = f"/{bucket.split('://')[1]}/one.zarr/blocks.1.attn/q/c/0/0/0/0"
    data = bytearray(fs.cat_file(chunk))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(chunk, bytes(data))
    store = open_store(f"{bucket}/one.zarr")  # the ids are intact: it opens
    np.testing.assert_array_equal(store["blocks.0.attn"]["q"].values.shape, (4, 3, 5, 64))
    with pytest.raises(StoreIntegrityError, match=r"checksum error reading 'q' of site 'blocks.1.attn'"):
        store["blocks.1.attn"]["q"].values
    fs.rm(chunk.rsplit("/c/", 1)[0] + "/c/0", recursive=True)  # gone chunks read as fill values: refused
    with pytest.raises(StoreIntegrityError, match=r"'blocks.1.attn/q' has no data stored for sample 0"):
        open_store(f"{bucket}/one.zarr")


def test_a_shard_of_another_store_at_a_url_is_refused(bucket):
    from interpret_spectral import open_store
    from interpret_spectral.store.format import StoreError

    fs = fsspec.filesystem("memory")
    manifest = f"/{bucket.split('://')[1]}/store/manifest.json"
    record = json.loads(fs.cat_file(manifest))
    record["fingerprint"]["model"] = "another-model"
    fs.pipe_file(manifest, json.dumps(record).encode())
    with pytest.raises(StoreError, match="does not belong to the store.*model 'VisionTransformer'"):
        open_store(f"{bucket}/store")


def test_hdf5_at_a_url_is_refused_in_one_line(local, bucket, tmp_path):
    from interpret_spectral import open_store
    from interpret_spectral.store.format import StoreError
    from interpret_spectral.store.remote import HDF5_AT_URL
    from interpret_spectral.store.shards import create_sharded_store

    create_sharded_store(tmp_path / "h5store", IDS, shard_size=2)  # HDF5 shards (the default)
    fsspec.filesystem("memory").put(str(tmp_path / "h5store"), f"/{bucket.split('://')[1]}/h5store", recursive=True)
    with pytest.raises(StoreError) as refused:
        open_store(f"{bucket}/h5store")
    assert HDF5_AT_URL in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(StoreError, match="HDF5 stores are read from local paths") as refused:
        open_store(f"{bucket}/one.h5")
    assert "\n" not in str(refused.value)


def test_writing_to_a_url_is_refused_before_any_work(tmp_path, monkeypatch):
    from interpret_spectral import probe
    from interpret_spectral.store.shards import create_sharded_store, seal_sharded_store, shard_path

    monkeypatch.chdir(tmp_path)
    # the model is not even looked at: the URL is refused first
    with pytest.raises(ValueError, match=r"^probe\(out=\.\.\.\) takes a local path, got the URL 's3://b/x.zarr'") as refused:
        probe(object(), [], out="s3://b/x.zarr")
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match="takes a local path"):
        create_sharded_store("memory://b/store", IDS, shard_size=2, shard_format="zarr")
    with pytest.raises(ValueError, match="takes a local path"):
        seal_sharded_store("memory://b/store")
    with pytest.raises(ValueError, match="takes a local path"):
        shard_path("memory://b/store", 0)
    assert list(tmp_path.iterdir()) == []  # nothing written (no local folder named 'memory:' or 's3:')
    assert not fsspec.filesystem("memory").exists("/b")


def test_file_urls_are_local_paths(local):
    from interpret_spectral import open_store

    for name in ("one.zarr", "store", "one.h5"):
        url = (local / name).resolve().as_uri()
        assert url.startswith("file:///")
        _assert_same(open_store(local / name), open_store(url))


def test_a_url_without_a_store_is_refused_clearly(bucket):
    from interpret_spectral import open_store
    from interpret_spectral.store.shards import NotAShardedStoreError

    with pytest.raises(FileNotFoundError, match="no store at memory://"):
        open_store(f"{bucket}/nothing.zarr")
    fsspec.filesystem("memory").pipe_file(f"/{bucket.split('://')[1]}/folder/readme.txt", b"hello")
    with pytest.raises(NotAShardedStoreError, match="without manifest.json"):
        open_store(f"{bucket}/folder")
    with pytest.raises(ValueError, match="is not a URL fsspec knows"):
        open_store("nosuchprotocol://bucket/store.zarr")

"""Zarr v3 stores and shards: the HDF5 store's tree and contract, checksummed chunks, concurrent shards.

The model is a tiny random-init timm ViT on real VOC images, probed in this process into
one HDF5 and one zarr store; the shard writers (two processes at once) and the killed
writers write numpy arrays with the zarr writer (no model: quick to start).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("zarr", minversion="3")
pytest.importorskip("dask")
pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parents[1]
VOC = ROOT.parent / "shared" / "data" / "voc" / "images"
pytestmark = pytest.mark.skipif(not VOC.is_dir(), reason=f"the shared VOC images are not at {VOC}")

SIZE = 64  # 4 x 4 patch grid
MODEL = textwrap.dedent(
    """
    import torch, timm
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size={size}, num_classes=0).eval()
    """
)
# Writes rows [start, stop) of a store into a zarr shard, as a probe of those samples would.
SHARD = textwrap.dedent(
    """
    import sys
    from interpret_spectral.store import open_store, site_names
    from interpret_spectral.store.sites import AttentionSite
    from interpret_spectral.store.zarr_writer import create_zarr_store
    source, out, start, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    tree = open_store(source)
    sites = []
    for name in site_names(tree):
        a = tree[name].attrs
        sites.append(AttentionSite(name, str(a["module"]), int(a["order"]), int(a["num_heads"]), int(a["head_dim"]),
                                   float(a["scale"]), (int(a["grid_h"]), int(a["grid_w"])),
                                   tuple(tree[name]["token_kind"].values)))
    attrs = {k: tree.attrs[k] for k in ("model", "adapter", "input_shape", "capture", "compute_dtype")}
    writer = create_zarr_store(sites, path=out, attrs=attrs, pixels_shape=tree["pixels"].shape[1:3],
                               samples_requested=stop - start, preprocessing=str(tree.attrs["preprocessing"]))
    rows = slice(start, stop)
    writer.append([str(s) for s in tree["sample"].values[rows]],
                  {name: {v: tree[name][v].values[rows] for v in "qkv"} for name in site_names(tree)},
                  tree["pixels"].values[rows],
                  original_sizes=list(zip(tree["original_height"].values[rows].tolist(),
                                          tree["original_width"].values[rows].tolist())))
    writer.close()
    """
)
# Writes one batch, says so, then waits to be killed: a writer dead mid-run.
STALLED = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from interpret_spectral.store.sites import AttentionSite
    from interpret_spectral.store.zarr_writer import create_zarr_store
    site = AttentionSite("a", "a", 0, 1, 2, 1.0, (1, 2), ("patch", "patch"))
    writer = create_zarr_store([site], path=sys.argv[1], samples_requested=3, overwrite=sys.argv[2] == "overwrite")
    writer.append(["s0"], {"a": {v: np.full((1, 1, 2, 2), 7.0) for v in "qkv"}})
    print("written", flush=True)
    time.sleep(120)
    """
)


def _run(script: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait(*writers: subprocess.Popen) -> None:
    for writer in writers:
        output, _ = writer.communicate(timeout=300)
        assert writer.returncode == 0, output


def _kill_after_first_batch(path: Path, mode: str) -> None:
    writer = _run(STALLED, path, mode)
    try:
        line = writer.stdout.readline()
        assert line.strip() == "written", line + writer.stdout.read()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.communicate(timeout=60)


@pytest.fixture(scope="module")
def files():
    return sorted(VOC.iterdir())[:4]


@pytest.fixture(scope="module")
def stores(files, tmp_path_factory):
    """This process probes one .h5 and one .zarr; then two processes write the two zarr shards of one store at once."""
    import torch

    from interpret_spectral import probe
    from interpret_spectral.store.shards import create_sharded_store, seal_sharded_store, shard_path

    root = tmp_path_factory.mktemp("zarr")
    namespace: dict = {}
    exec(MODEL.format(size=SIZE), namespace)
    with torch.no_grad():
        for name in ("one.h5", "one.zarr"):
            probe(namespace["model"], files, out=root / name, progress=False, image_size=SIZE, batch_size=3).close()
    folder = root / "store"
    create_sharded_store(folder, [f.stem for f in files], shard_size=2, shard_format="zarr")
    _wait(_run(SHARD, root / "one.h5", shard_path(folder, 0), 0, 2), _run(SHARD, root / "one.h5", shard_path(folder, 1), 2, 4))
    sealed = seal_sharded_store(folder)
    assert sealed["complete"] and sealed["shard_format"] == "zarr"
    assert [s["name"] for s in sealed["shards"]] == ["shard-00000.zarr", "shard-00001.zarr"]
    return {"folder": folder, "h5": root / "one.h5", "zarr": root / "one.zarr"}


def _assert_same_store(a, b) -> None:
    """Every node, variable (dims, dtype, values, attribute names) and attribute of two stores is the same."""
    assert [n.path for n in a.subtree] == [n.path for n in b.subtree]
    for node in a.subtree:
        other = b[node.path]
        assert list(node.variables) == list(other.variables), node.path
        assert list(node.coords) == list(other.coords), node.path
        for name, variable in node.to_dataset(inherit=False).variables.items():
            theirs = other[name].variable
            assert (theirs.dims, theirs.dtype) == (variable.dims, variable.dtype), (node.path, name)
            np.testing.assert_array_equal(theirs.values, variable.values, err_msg=f"{node.path}/{name}")
            assert set(theirs.attrs) == set(variable.attrs), (node.path, name)
        assert set(node.attrs) == set(other.attrs), node.path
        for key, value in node.attrs.items():
            np.testing.assert_array_equal(np.asarray(other.attrs[key]), np.asarray(value), err_msg=f"{node.path} {key}")


def test_probe_into_zarr_holds_what_the_hdf5_store_holds(stores):
    from zarr.codecs import Crc32cCodec

    from interpret_spectral import open_store, validate_store
    from interpret_spectral.store.shards import store_fingerprint
    from interpret_spectral.store.zarr_store import open_zarr_group

    h5, zr = open_store(stores["h5"]), open_store(stores["zarr"])
    validate_store(zr)
    assert stores["zarr"].is_dir() and int(zr.attrs["complete"]) == 1 and int(zr.attrs["writing_finished"]) == 1
    _assert_same_store(h5, zr)
    assert store_fingerprint(stores["zarr"]) == store_fingerprint(stores["h5"])
    assert zr["pixels"].shape == (4, SIZE, SIZE, 3) and zr["blocks.11.attn"]["q"].shape == (4, 3, 17, 64)
    group = open_zarr_group(stores["zarr"])
    arrays = [a for _, a in group.arrays()] + [a for _, g in group.groups() for _, a in g.arrays()]
    assert len(arrays) == 5 + 12 * 6
    for array in arrays:  # every array: zarr v3, named dimensions, crc32c-checksummed chunks, no object codec
        assert array.metadata.zarr_format == 3 and array.metadata.dimension_names is not None
        assert isinstance(array.compressors[-1], Crc32cCodec), array.name
        assert array.dtype.kind != "O"
    h5.close(), zr.close()


def test_concurrent_zarr_shards_open_as_one_and_decompose_as_one_file(stores, files):
    from interpret_spectral import decompose, decompose_dataset, open_store

    store, single = open_store(stores["folder"]), open_store(stores["h5"])
    q = store["blocks.0.attn"]["q"]
    assert q.chunks is not None and q.chunks[0] == (1, 1, 1, 1)  # lazily, one sample per chunk
    assert [str(s) for s in store["sample"].values] == [f.stem for f in files]
    assert int(store.attrs["complete"]) == 1 and int(store.attrs["samples_requested"]) == 4
    np.testing.assert_array_equal(q.values, single["blocks.0.attn"]["q"].values)
    a = decompose(store, graph="qk", n_components=4, layers=[0, 5, 11], progress=False)
    b = decompose(single, graph="qk", n_components=4, layers=[0, 5, 11], progress=False)
    np.testing.assert_array_equal(a["vectors"].values, b["vectors"].values)
    a = decompose_dataset(store, graph="vv", n_components=3, layers=[0, 11], progress=False)
    b = decompose_dataset(single, graph="vv", n_components=3, layers=[0, 11], progress=False)
    np.testing.assert_allclose(np.abs(a["vectors"].values), np.abs(b["vectors"].values), atol=1e-6)
    store.close(), single.close()


def test_plain_xarray_one_liners_of_the_docs(stores):
    import xarray as xr

    folder = stores["folder"]
    with xr.open_dataset(stores["h5"], group="blocks.0.attn", engine="h5netcdf", phony_dims="sort") as single:
        expected = single["q"].values
    # docs/scaling.md: one zarr store, and one site of a sharded store of zarr shards, in plain xarray
    tree = xr.open_datatree(stores["zarr"], engine="zarr", consolidated=False)
    np.testing.assert_array_equal(tree["blocks.0.attn"]["q"].values, expected)
    assert [str(s) for s in tree["sample"].values] == [str(s) for s in xr.open_datatree(
        stores["h5"], engine="h5netcdf", phony_dims="sort")["sample"].values]
    shards = [folder / s["name"] for s in json.loads((folder / "manifest.json").read_text())["shards"]]
    site = xr.open_mfdataset(shards, group="blocks.0.attn", engine="zarr", consolidated=False, combine="nested",
                             concat_dim="sample", data_vars="minimal", coords="minimal", compat="override")
    np.testing.assert_array_equal(site["q"].values, expected)
    site.close()


def test_a_flipped_byte_is_a_store_integrity_error_naming_the_variable(stores, tmp_path):
    from interpret_spectral import open_store
    from interpret_spectral.store import verify_store
    from interpret_spectral.store.format import StoreError, StoreIntegrityError

    def flipped(relative: str) -> Path:
        store = tmp_path / f"{relative.replace('/', '_')}.zarr"
        shutil.copytree(stores["zarr"], store)
        chunk = store / relative
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0x10
        chunk.write_bytes(bytes(data))
        return store

    damaged = flipped("blocks.3.attn/k/c/2/0/0/0")
    store = open_store(damaged)  # lazily: only the damaged sample's read fails
    store["blocks.3.attn"]["k"][:2].values
    with pytest.raises(StoreIntegrityError, match=r"checksum error reading 'k' of site 'blocks\.3\.attn', samples 0-3"):
        store["blocks.3.attn"]["k"].values
    with pytest.raises(StoreIntegrityError, match=r"reading 'k' of site 'blocks\.3\.attn', sample 2 \("):
        verify_store(damaged)  # names the damaged sample
    with pytest.raises(StoreIntegrityError, match=r"checksum error reading 'sample' \(the sample ids\)"):
        open_store(flipped("sample/c/0"))
    with pytest.raises(StoreIntegrityError, match=r"checksum error reading 'blocks\.0\.attn/token_kind'"):
        open_store(flipped("blocks.0.attn/token_kind/c/0"))
    lost = flipped("blocks.2.attn/v/c/3/0/0/0")
    shutil.rmtree(lost / "blocks.2.attn" / "v" / "c" / "3")  # zarr reads a missing chunk as fill values
    with pytest.raises(StoreIntegrityError, match=r"'blocks\.2\.attn/v' has no data stored for sample 3 "):
        open_store(lost)
    meta = flipped("blocks.1.attn/q/zarr.json")
    text = (meta / "blocks.1.attn" / "q" / "zarr.json").read_text()
    (meta / "blocks.1.attn" / "q" / "zarr.json").write_text(text[: len(text) // 2])  # truncated metadata
    with pytest.raises(StoreError, match=r"cannot be read as a zarr v3 store \(.*JSON"):
        open_store(meta)  # one clear error, never a raw one


def test_a_killed_or_aborted_writer_leaves_nothing_that_looks_complete(stores, tmp_path):
    import numpy as np

    from interpret_spectral import open_store
    from interpret_spectral.store import require_complete
    from interpret_spectral.store.format import StoreError
    from interpret_spectral.store.sites import AttentionSite
    from interpret_spectral.store.zarr_writer import create_zarr_store

    path = tmp_path / "killed.zarr"
    _kill_after_first_batch(path, "new")
    store = open_store(path)  # what it wrote is there, and says it is not complete
    assert store.sizes["sample"] == 1 and int(store.attrs["complete"]) == 0
    with pytest.raises(StoreError, match="holds 1 of 3 samples; resume"):
        require_complete(store)
    site = AttentionSite("a", "a", 0, 1, 2, 1.0, (1, 2), ("patch", "patch"))
    batch = {"a": {v: np.ones((2, 1, 2, 2)) for v in "qkv"}}
    writer = create_zarr_store([site], path=path, samples_requested=3, resume=True)
    assert writer.written == ["s0"]
    writer.append(["s1", "s2"], batch)
    done = writer.close()
    assert int(done.attrs["complete"]) == 1 and done["a"]["q"].values[:, 0, 0, 0].tolist() == [7.0, 1.0, 1.0]

    # Replacing a complete store: a killed or aborted writer leaves the old one as it was.
    _kill_after_first_batch(path, "overwrite")
    left = [p.name for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert len(left) == 1 and left[0].startswith("killed.zarr.partial-")
    writer = create_zarr_store([site], path=path, samples_requested=2, overwrite=True)
    assert not (tmp_path / left[0]).exists()  # the next writer of that path removed the killed one's temporary
    writer.append(["t0", "t1"], batch)
    writer.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.zarr"]
    again = open_store(path)
    assert [str(s) for s in again["sample"].values] == ["s0", "s1", "s2"] and int(again.attrs["complete"]) == 1


def test_one_sharded_store_holds_shards_of_one_format(stores, tmp_path):
    from interpret_spectral import open_store
    from interpret_spectral.store.format import StoreError
    from interpret_spectral.store.shards import create_sharded_store, missing_shards, seal_sharded_store

    folder = tmp_path / "store"
    shutil.copytree(stores["folder"], folder)
    shutil.copy(stores["h5"], folder / "shard-00002.h5")
    for call in (open_store, seal_sharded_store, missing_shards):
        with pytest.raises(StoreError, match=r"is a sharded store of zarr shards \(its manifest\) but holds "
                                             r"shard-00002\.h5, a h5 shard: a store holds shards of one format") as e:
            call(folder)
        assert "\n" not in str(e.value)
    with pytest.raises(StoreError, match="holds a sharded store of zarr shards, not h5"):
        create_sharded_store(folder, [f"{i}" for i in range(4)], 2, resume=True)

    # A zarr shard of another model is refused as an HDF5 one is.
    (folder / "shard-00002.h5").unlink()
    meta = folder / "shard-00001.zarr" / "zarr.json"
    root = json.loads(meta.read_text())
    root["attributes"]["model"] = "another"
    meta.write_text(json.dumps(root))
    with pytest.raises(StoreError, match=r"shard .*shard-00001\.zarr does not belong to the store .* differs in model"):
        seal_sharded_store(folder)


def test_bad_zarr_input_is_one_clear_error(tmp_path):
    from interpret_spectral import open_store
    from interpret_spectral.store.format import StoreError
    from interpret_spectral.store.sites import AttentionSite
    from interpret_spectral.store.zarr_writer import create_zarr_store

    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(StoreError, match=r"empty\.zarr is not a zarr v3 store \(no zarr\.json\)"):
        open_store(tmp_path / "empty.zarr")
    site = AttentionSite("a", "a", 0, 1, 2, 1.0, (1, 2), ("patch", "patch"))
    with pytest.raises(ValueError, match="'lzf' is an HDF5 filter"):
        create_zarr_store([site], path=tmp_path / "x.zarr", compression="lzf")
    (tmp_path / "file.zarr").write_text("not a folder")
    with pytest.raises(FileExistsError, match="is a file; a zarr store is a folder"):
        create_zarr_store([site], path=tmp_path / "file.zarr")
    writer = create_zarr_store([site], path=tmp_path / "y.zarr")
    writer.append(["a"], {"a": {v: np.zeros((1, 1, 2, 2)) for v in "qkv"}})
    writer.close()
    root = json.loads((tmp_path / "y.zarr" / "sample" / "zarr.json").read_text())
    root["shape"] = [10**9]  # an edited dimension is refused before anything is allocated
    (tmp_path / "y.zarr" / "sample" / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(StoreError, match="declares 1000000000 rows but its chunks store at most 1024"):
        open_store(tmp_path / "y.zarr")

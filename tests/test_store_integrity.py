"""Store integrity: checksums, completeness, locks, interruptions, absurd attributes, replace-on-success,
self-describing files and the ``spectral`` accessor."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import xarray as xr

from interpret_spectral.store.format import StoreError, StoreIntegrityError, StoreLockedError
from interpret_spectral.store.reader import open_store, require_complete, sample_ids, verify_store
from interpret_spectral.store.sites import AttentionSite
from interpret_spectral.store.writer import create_store

KINDS = ("cls",) + ("patch",) * 6


def _sites(n=2):
    return [AttentionSite(f"blocks.{i}.attn", f"blocks.{i}.attn", i, 2, 4, 0.5, (2, 3), KINDS) for i in range(n)]


def _batch(rng, ids, n_sites=2, features=False):
    arrays = {}
    for site in _sites(n_sites):
        arrays[site.name] = {v: rng.standard_normal((len(ids), 2, 7, 4)).astype(np.float32) for v in "qkv"}
        if features:
            arrays[site.name]["features"] = rng.standard_normal((len(ids), 7, 5)).astype(np.float32)
    pixels = rng.integers(0, 256, (len(ids), 6, 9, 3), dtype=np.uint8)
    return arrays, pixels


def _full_store(path, n=4, n_sites=2, **kwargs):
    """A store with every kind of array: q, k, v, features, pixels, original sizes, ids."""
    rng = np.random.default_rng(0)
    writer = create_store(_sites(n_sites), path=path, capture=("q", "k", "v", "features"),
                          feature_dims={s.name: 5 for s in _sites(n_sites)}, pixels_shape=(6, 9),
                          samples_requested=n, preprocessing="resize short side to 6, centre crop 6x9", **kwargs)
    for start in range(0, n, 2):
        ids = [f"img-{i}" for i in range(start, min(start + 2, n))]
        arrays, pixels = _batch(rng, ids, n_sites=n_sites, features=True)
        writer.append(ids, arrays, pixels, original_sizes=[(480, 640)] * len(ids))
    writer.close().close()
    return path


def _chunks(path):
    """(dataset name, sample row of the chunk or None, byte offset, size) of every stored numeric chunk."""
    out = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.chunks is not None and obj.dtype.kind in "fiu":
                for i in range(obj.id.get_num_chunks()):
                    info = obj.id.get_chunk_info(i)
                    row = info.chunk_offset[0] if obj.maxshape[0] is None else None
                    out.append((name, row, info.byte_offset, info.size))
        f.visititems(visit)
    return out


def _read_everything(path):
    verify_store(path)


def test_every_flipped_byte_in_an_array_is_detected(tmp_path):
    path = _full_store(tmp_path / "store.h5", n=2, n_sites=1)
    chunks = _chunks(path)
    names = {name for name, *_ in chunks}
    assert {"blocks.0.attn/q", "blocks.0.attn/features", "pixels", "sample_crc32", "original_height",
            "blocks.0.attn/token_y"} <= names
    data = path.read_bytes()
    rng = np.random.default_rng(1234)
    for trial in range(2 * len(chunks)):  # every stored chunk once, then random ones
        name, row, offset, size = chunks[rng.integers(len(chunks))] if trial >= len(chunks) else chunks[trial]
        position = offset + int(rng.integers(size))
        damaged = bytearray(data)
        damaged[position] ^= 1 << int(rng.integers(8))
        copy = tmp_path / "damaged.h5"
        copy.write_bytes(bytes(damaged))
        with pytest.raises(StoreError) as caught:
            _read_everything(copy)
        message = str(caught.value)
        assert "damaged" in message, (name, message)
        variable = name.rsplit("/", 1)[-1]
        assert repr(variable) in message, (name, message)
        if "/" in name:
            assert name.split("/")[0] in message
        if row is not None and variable not in ("sample_crc32", "original_height", "original_width"):
            assert f"sample {row} ('img-{row}')" in message, message


def test_a_damaged_sample_id_is_detected(tmp_path):
    path = _full_store(tmp_path / "store.h5")
    data = path.read_bytes()
    position = data.index(b"img-2")
    damaged = bytearray(data)
    damaged[position + 4] ^= 0x01  # img-2 -> img-3: a valid-looking id
    path.write_bytes(bytes(damaged))
    with pytest.raises(StoreIntegrityError, match="sample id of row 2"):
        open_store(path)


def test_checksum_error_names_variable_site_and_sample_through_patch_tokens(tmp_path):
    from interpret_spectral.store.reader import patch_tokens

    path = _full_store(tmp_path / "store.h5")
    (_, _, offset, size), = [c for c in _chunks(path) if c[0] == "blocks.1.attn/k" and c[1] == 3]
    damaged = bytearray(path.read_bytes())
    damaged[offset + size // 2] ^= 0x40
    path.write_bytes(bytes(damaged))
    store = open_store(path)
    assert patch_tokens(store, "blocks.1.attn", "k", samples=2).shape == (2, 6, 4)  # intact samples still read
    with pytest.raises(StoreIntegrityError, match=r"'k' of site 'blocks.1.attn', sample 3 \('img-3'\)"):
        patch_tokens(store, "blocks.1.attn", "k", samples=3)
    with pytest.raises(StoreIntegrityError, match="samples 0-3"):
        store["blocks.1.attn"]["k"].values
    store.close()


def test_incomplete_store_says_so_and_resumes_bit_exactly(tmp_path):
    path = tmp_path / "store.h5"
    rng = np.random.default_rng(5)
    batches = [(["a", "b"], *_batch(rng, ["a", "b"])), (["c", "d"], *_batch(rng, ["c", "d"])),
               (["e", "f"], *_batch(rng, ["e", "f"]))]
    writer = create_store(_sites(), path=path, pixels_shape=(6, 9), samples_requested=6)
    writer.append(*batches[0])
    writer.abort()  # the run stops after 2 of 6 samples
    store = open_store(path)
    assert (store.attrs["samples_requested"], store.attrs["samples_written"], store.attrs["complete"]) == (6, 2, 0)
    with pytest.raises(StoreError, match=r"holds 2 of 6 samples; resume with probe\(\.\.\., resume=True\)"):
        require_complete(store)
    with pytest.raises(StoreError, match="2 of 6"):
        store.spectral.require_complete()
    assert require_complete(store, allow_incomplete=True) is store
    store.close()
    writer = create_store(_sites(), path=path, pixels_shape=(6, 9), samples_requested=6, resume=True)
    assert writer.written == ["a", "b"]
    for ids, arrays, pixels in batches[1:]:
        writer.append(ids, arrays, pixels)
    store = writer.close()
    assert store.attrs["complete"] == 1 and sample_ids(store) == list("abcdef")
    q = np.concatenate([arrays["blocks.1.attn"]["q"] for _, arrays, _ in batches])
    assert np.array_equal(store["blocks.1.attn"]["q"].values, q)  # bit-exact
    store.close()


def test_a_writer_that_never_closed_is_incomplete_without_a_requested_count(tmp_path):
    path = tmp_path / "store.h5"
    writer = create_store(_sites(), path=path)
    writer.append(["a"], _batch(np.random.default_rng(0), ["a"])[0])
    writer.abort()
    store = open_store(path)
    with pytest.raises(StoreError, match="was not finished"):
        require_complete(store)
    store.close()


def test_a_store_held_by_a_writer_is_reported_locked_not_damaged(tmp_path, made_store):
    path = shutil.copy(made_store, tmp_path / "store.h5")
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import h5py, time; f = h5py.File({str(path)!r}, 'r+'); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockedError, match="is locked: another process has it open for writing"):
            open_store(path)
    finally:
        holder.kill()
        holder.wait()
    open_store(path).close()  # intact once the writer is gone


def test_ctrl_c_while_opening_is_an_interruption(made_store, monkeypatch):
    path = made_store

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(xr, "open_datatree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        open_store(path)
    monkeypatch.undo()

    def wrapped(*args, **kwargs):  # h5py turning a Ctrl-C inside a callback into an OSError
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise OSError("Unable to synchronously open file (callback failed)")

    monkeypatch.setattr(h5py, "File", wrapped)
    with pytest.raises(KeyboardInterrupt):
        open_store(path)


@pytest.fixture(scope="module")
def made_store(tmp_path_factory):
    """One full store for the tests that only read or copy it."""
    return _full_store(tmp_path_factory.mktemp("made") / "store.h5")


def _edited(path, tmp_path, edit, name="edited.h5"):
    copy = tmp_path / name
    shutil.copy(path, copy)
    with h5py.File(copy, "r+") as f:
        edit(f)
    return copy


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.attrs.__setitem__("format_version", "one"), "format_version 'one', not a whole number"),
    (lambda f: f["blocks.0.attn"].attrs.__setitem__("grid_h", 10**6), "grid_h\\*grid_w = 1000000x3"),
    (lambda f: f["blocks.1.attn"].attrs.__setitem__("num_heads", 10**9), "num_heads=1000000000 but 'q' holds 2 heads"),
    (lambda f: f["blocks.1.attn"].attrs.__setitem__("num_heads", 5 * 10**6), "num_heads=5000000"),
    (lambda f: f["blocks.0.attn"].attrs.__setitem__("head_dim", 4096), "head_dim=4096"),
    (lambda f: f["blocks.0.attn"].attrs.__setitem__("scale", 1e30), "scale=1e\\+30 is not a softmax scale"),
    (lambda f: f["blocks.0.attn"].attrs.__setitem__("scale", float("nan")), "scale=nan"),
    (lambda f: f["blocks.0.attn"].attrs.__setitem__("grid_w", -3), "grid_w=-3"),
    (lambda f: f["blocks.0.attn"].attrs.__setitem__("order", "first"), "order='first'"),
    (lambda f: f["blocks.0.attn"].attrs.__delitem__("head_dim"), "lacks site attributes \\['head_dim'\\]"),
    (lambda f: [d.resize(10**12, axis=0) for d in (f["sample"], f["sample_crc32"], f["original_height"],
                f["original_width"], f["pixels"], *(f[s][v] for s in ("blocks.0.attn", "blocks.1.attn")
                                                    for v in ("q", "k", "v", "features")))],
     "declares 1000000000000 rows but data is stored for 4;"),
    (lambda f: f["blocks.0.attn"]["q"].resize(10**12, axis=0), "'blocks.0.attn/q' has 1000000000000 rows"),
])
def test_absurd_attributes_are_refused_before_allocating(tmp_path, made_store, edit, message):
    import tracemalloc

    edited = _edited(made_store, tmp_path, edit)
    traced = "rows" in message  # the edited sample dimension: measure that nothing big is allocated
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(StoreError, match=message):
        open_store(edited)
    if traced:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 50 * 2**20
    assert time.perf_counter() - started < 30


def test_overwrite_keeps_the_old_store_until_the_new_one_is_complete(tmp_path):
    path = _full_store(tmp_path / "store.h5")
    before = path.read_bytes()
    rng = np.random.default_rng(9)
    writer = create_store(_sites(), path=path, overwrite=True)
    writer.append(["new"], _batch(rng, ["new"])[0])
    assert path.read_bytes() == before  # nothing touched yet
    writer.abort()  # the new run fails
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["store.h5"]
    writer = create_store(_sites(), path=path, overwrite=True)
    writer.append(["new"], _batch(rng, ["new"])[0])
    store = writer.close()
    assert sample_ids(store) == ["new"] and sorted(os.listdir(tmp_path)) == ["store.h5"]
    store.close()
    with pytest.raises(ValueError, match="exclude each other"):
        create_store(_sites(), path=path, overwrite=True, resume=True)


def test_overwrite_killed_midway_leaves_the_old_store(tmp_path):
    path = _full_store(tmp_path / "store.h5")
    before = path.read_bytes()
    script = f"""
import os, numpy as np
import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_store_integrity import _sites, _batch
from interpret_spectral.store.writer import create_store
w = create_store(_sites(), path={str(path)!r}, overwrite=True)
w.append(["x"], _batch(np.random.default_rng(0), ["x"])[0])
os.kill(os.getpid(), 9)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -9
    assert path.read_bytes() == before
    store = open_store(path)
    assert store.attrs["complete"] == 1 and sample_ids(store) == [f"img-{i}" for i in range(4)]
    store.close()
    left = [p.name for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert len(left) == 1 and left[0].startswith("store.h5.partial-")  # the killed writer's temporary
    writer = create_store(_sites(), path=path, overwrite=True)  # the next writer of that path removes it
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == [f"store.h5.partial-{os.getpid()}"]
    writer.abort()
    assert sorted(os.listdir(tmp_path)) == ["store.h5"]


def test_files_describe_themselves(tmp_path):
    path = _full_store(tmp_path / "store.h5", attrs={"model": "toy", "options": {"image_size": 224, "crop": True},
                                                      "layers": ["blocks.0.attn", "blocks.1.attn"]},
                       compression="gzip")
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not name.split("/")[-1] in ("head", "channel", "token", "feature", "y", "x", "rgb"):
                assert "long_name" in obj.attrs and "description" in obj.attrs, name
                if obj.dtype.kind in "fiu":
                    assert obj.fletcher32, name
                    assert obj.compression == "gzip" and obj.shuffle, name
        f.visititems(visit)
    store = open_store(path)
    assert store.attrs["preprocessing"] == "resize short side to 6, centre crop 6x9"
    assert store.attrs["options.image_size"] == 224 and store.attrs["options.crop"] == 1
    assert list(store.attrs["layers"]) == ["blocks.0.attn", "blocks.1.attn"]
    assert store["original_height"].values.tolist() == [480] * 4
    assert store["original_width"].dtype == np.int32
    assert store["blocks.0.attn"]["q"].attrs["long_name"] == "attention queries"
    store.close()
    uncompressed = _full_store(tmp_path / "plain.h5", compression=None)
    with h5py.File(uncompressed, "r") as f:
        assert f["blocks.0.attn/q"].compression is None and f["blocks.0.attn/q"].fletcher32
    with pytest.raises(ValueError, match="compression must be one of"):
        create_store(_sites(), path=tmp_path / "x.h5", compression="zstd")


def test_memory_store_matches_disk_store_layout():
    writer = create_store(_sites(), pixels_shape=(6, 9), samples_requested=2, preprocessing="none")
    arrays, pixels = _batch(np.random.default_rng(0), ["a", "b"])
    writer.append(["a", "b"], arrays, pixels, original_sizes=[(10, 20), None])
    store = writer.close()
    assert store["original_width"].values.tolist() == [20, -1]
    assert store["pixels"].attrs["long_name"] == "input image" and store.attrs["complete"] == 1


def test_accessor_picks_sites_by_forward_order():
    sites = [AttentionSite(f"m.{name}", f"m.{name}", order, 2, 4, 0.5, (2, 3), KINDS)
             for order, name in enumerate(["z", "a", "q", "b", "y", "c"])]
    writer = create_store(list(reversed(sites)))
    rng = np.random.default_rng(0)
    writer.append(["s"], {s.name: {v: rng.standard_normal((1, 2, 7, 4)) for v in "qkv"} for s in sites})
    store = writer.close()
    assert store.spectral.sites == [s.name for s in sites]
    assert store.spectral.site(5).name == "m.c" and store.spectral.layer(1).name == "m.a"
    assert store.spectral.site(-6).name == "m.z" and store.spectral.site("m.q").name == "m.q"
    assert store.spectral.samples == ["s"]
    with pytest.raises(IndexError, match="6 attention sites"):
        store.spectral.site(6)
    with pytest.raises(TypeError, match="position"):
        store.spectral.site(1.5)
    with pytest.raises(KeyError, match="no site 'nope'"):
        store.spectral.site("nope")


def test_damaged_metadata_is_a_store_error_never_a_raw_h5py_one(tmp_path):
    """Flipped bytes in the file's metadata (object headers, heaps): a StoreError naming the file, or no effect."""
    clean = _full_store(tmp_path / "clean.h5").read_bytes()
    outcomes = set()
    for offset in range(0, 6000, 149):
        damaged = bytearray(clean)
        damaged[offset] ^= 0xFF
        path = tmp_path / "damaged.h5"
        path.write_bytes(bytes(damaged))
        try:
            store = open_store(path)
            for node in store.subtree:
                for variable in node.to_dataset(inherit=False).variables.values():
                    np.asarray(variable.values)
            store.close()
            outcomes.add("read")
        except StoreError as error:
            assert "damaged.h5" in str(error), error
            outcomes.add(type(error).__name__)
    assert "StoreIntegrityError" in outcomes or "StoreError" in outcomes  # the sweep did hit metadata

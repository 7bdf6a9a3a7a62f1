"""The store format: write, reopen, validate, and clear errors on bad files."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import xarray as xr

from interpret_spectral.capture.contract import AttentionSite
from interpret_spectral.store.format import FORMAT_VERSION, StoreError
from interpret_spectral.store.writer import create_store
from interpret_spectral.store.reader import open_store, patch_tokens, sample_ids, site_names


def _sites():
    kinds = ("cls", "register") + ("patch",) * 6
    return [
        AttentionSite("blocks.1.attn", "blocks.1.attn", 1, 2, 4, 0.5, (2, 3), kinds),
        AttentionSite("blocks.0.attn", "blocks.0.attn", 0, 2, 4, 0.5, (2, 3), kinds),
    ]


def _batches(rng, n_batches=3, batch=2, timesteps=None):
    extra = () if timesteps is None else (len(timesteps),)
    out = []
    for b in range(n_batches):
        arrays = {s.name: {v: rng.standard_normal((batch, *extra, 2, 8, 4)) for v in "qkv"} for s in _sites()}
        out.append(([f"s{b}-{i}" for i in range(batch)], arrays))
    return out


@pytest.mark.parametrize("timesteps", [None, [999, 500]])
def test_disk_store_equals_memory_store(tmp_path, timesteps):
    rng = np.random.default_rng(0)
    batches = _batches(rng, timesteps=timesteps)
    extra = None if timesteps is None else {"timestep": timesteps}
    trees = []
    for path in (None, tmp_path / "store.h5"):
        writer = create_store(_sites(), path=path, extra_dims=extra, attrs={"model": "toy"})
        for ids, arrays in batches:
            writer.append(ids, arrays)
        trees.append(writer.close())
    memory, disk = trees
    assert site_names(disk) == ["blocks.0.attn", "blocks.1.attn"]
    assert list(disk.children) == ["blocks.0.attn", "blocks.1.attn"]  # groups written in forward order
    assert sample_ids(disk) == sample_ids(memory) == [i for ids, _ in batches for i in ids]
    for name in site_names(memory):
        assert memory[name].ds.equals(disk[name].ds)
        np.testing.assert_array_equal(disk[name]["token_kind"].values[:3], ["cls", "register", "patch"])
        np.testing.assert_array_equal(disk[name]["token_y"].values, [-1, -1, 0, 0, 0, 1, 1, 1])
        np.testing.assert_array_equal(disk[name]["token_x"].values, [-1, -1, 0, 1, 2, 0, 1, 2])
    expected_dims = ("sample",) + (() if timesteps is None else ("timestep",)) + ("head", "token", "channel")
    assert disk["blocks.0.attn"]["q"].dims == expected_dims
    if timesteps is not None:
        np.testing.assert_array_equal(disk["timestep"].values, timesteps)
    # The same file opens with plain xarray.
    plain = xr.open_datatree(tmp_path / "store.h5", engine="h5netcdf")
    assert plain.attrs["format"] == "interpret_spectral.store"
    assert int(plain.attrs["format_version"]) == FORMAT_VERSION
    np.testing.assert_allclose(
        plain["blocks.1.attn"]["k"].values, np.concatenate([a["blocks.1.attn"]["k"] for _, a in batches]), rtol=1e-6
    )
    plain.close()


def test_patch_tokens_reads_grid_order(tmp_path):
    rng = np.random.default_rng(1)
    writer = create_store(_sites(), path=tmp_path / "s.h5")
    batches = _batches(rng, n_batches=1)
    writer.append(*batches[0])
    store = writer.close()
    q = patch_tokens(store, "blocks.0.attn", "q", samples=1)
    np.testing.assert_allclose(q, batches[0][1]["blocks.0.attn"]["q"][1][:, 2:], rtol=1e-6)


def test_float16_and_bad_shapes():
    writer = create_store(_sites(), dtype="float16")
    rng = np.random.default_rng(2)
    ids, arrays = _batches(rng, n_batches=1)[0]
    writer.append(ids, arrays)
    assert writer.close()["blocks.0.attn"]["v"].dtype == np.float16
    writer = create_store(_sites())
    arrays["blocks.0.attn"]["q"] = arrays["blocks.0.attn"]["q"][:, :1]
    with pytest.raises(ValueError, match="does not match"):
        writer.append(ids, arrays)
    with pytest.raises(ValueError, match="dtype"):
        create_store(_sites(), dtype="int8")


def test_duplicate_sample_ids_are_refused():
    writer = create_store(_sites())
    ids, arrays = _batches(np.random.default_rng(3), n_batches=1)[0]
    writer.append(ids, arrays)
    with pytest.raises(ValueError, match="unique"):
        writer.append(ids, arrays)


def _written_store(path):
    writer = create_store(_sites(), path=path)
    for ids, arrays in _batches(np.random.default_rng(4)):
        writer.append(ids, arrays)
    writer.close().close()
    return path


def test_truncated_file_raises_clear_error(tmp_path):
    path = _written_store(tmp_path / "store.h5")
    truncated = tmp_path / "truncated.h5"
    shutil.copy(path, truncated)
    with open(truncated, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(StoreError, match="is truncated"):
        open_store(truncated)


def test_hdf5_that_is_not_a_store_raises(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(3)
    with pytest.raises(StoreError, match="not an interpret_spectral store"):
        open_store(path)


def test_future_format_version_raises(tmp_path):
    path = _written_store(tmp_path / "store.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(StoreError, match="newer than this interpret_spectral reads"):
        open_store(path)


def test_existing_file_needs_resume(tmp_path):
    path = _written_store(tmp_path / "store.h5")
    with pytest.raises(FileExistsError, match="resume=True"):
        create_store(_sites(), path=path)
    writer = create_store(_sites(), path=path, resume=True)
    assert len(writer.written) == 6
    writer.close().close()
    other = [AttentionSite("x", "x", 0, 1, 4, 1.0, (1, 1), ("patch",))]
    with pytest.raises(StoreError, match="cannot resume"):
        create_store(other, path=path, resume=True)


def test_batch_that_crashed_mid_write_is_left_out_and_overwritten(tmp_path):
    path = tmp_path / "store.h5"
    batches = _batches(np.random.default_rng(5))
    writer = create_store(_sites(), path=path)
    writer.append(*batches[0])
    # A crash after the arrays grew and part of the data landed, before the ids were written.
    writer._resize(4)
    writer._file["blocks.0.attn"]["q"][2:4] = 1.0
    writer.abort()
    store = open_store(path)
    assert sample_ids(store) == batches[0][0]
    assert store["blocks.0.attn"]["q"].shape[0] == 2
    store.close()
    writer = create_store(_sites(), path=path, resume=True)
    writer.append(*batches[1])
    store = writer.close()
    assert sample_ids(store) == batches[0][0] + batches[1][0]
    np.testing.assert_allclose(store["blocks.0.attn"]["q"].values[2:], batches[1][1]["blocks.0.attn"]["q"], rtol=1e-6)


def test_float16_on_disk(tmp_path):
    writer = create_store(_sites(), dtype="float16", path=tmp_path / "half.h5")
    ids, arrays = _batches(np.random.default_rng(6), n_batches=1)[0]
    writer.append(ids, arrays)
    store = writer.close()
    assert store["blocks.0.attn"]["q"].dtype == np.float16
    np.testing.assert_allclose(store["blocks.0.attn"]["q"].values, arrays["blocks.0.attn"]["q"], rtol=1e-3, atol=1e-3)

"""Sharded stores: written by concurrent processes, opened as one Dask-backed store, refused when mixed.

Shards are probes of a tiny random-init timm ViT (seeded: the same model in every
process) on real VOC images.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dask")
pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parents[1]
VOC = ROOT.parent / "shared" / "data" / "voc" / "images"
pytestmark = pytest.mark.skipif(not VOC.is_dir(), reason=f"the shared VOC images are not at {VOC}")

WRITER = textwrap.dedent(
    """
    import sys, torch, timm
    from interpret_spectral import probe
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=int(sys.argv[2]), num_classes=0).eval()
    probe(model, sys.argv[3:], out=sys.argv[1], progress=False, image_size=int(sys.argv[2])).close()
    """
)


def _write(path: Path, files: list[Path], size: int = 64) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(size), *map(str, files)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(*writers: subprocess.Popen) -> None:
    for writer in writers:
        output, _ = writer.communicate(timeout=300)
        assert writer.returncode == 0, output


@pytest.fixture(scope="module")
def files():
    return sorted(VOC.iterdir())[:4]


@pytest.fixture(scope="module")
def sharded(files, tmp_path_factory):
    """Two processes write the two shards of one store at the same moment; a third writes one file."""
    from interpret_spectral.store.shards import create_sharded_store, seal_sharded_store, shard_path

    root = tmp_path_factory.mktemp("shards")
    folder = root / "store"
    manifest = create_sharded_store(folder, [f.stem for f in files], shard_size=2)
    assert manifest["complete"] is False
    _wait(_write(shard_path(folder, 0), files[:2]), _write(shard_path(folder, 1), files[2:]),
          _write(root / "one.h5", files))
    sealed = seal_sharded_store(folder)
    assert sealed["complete"] and all(s["complete"] for s in sealed["shards"])
    return folder, root / "one.h5"


def test_concurrent_shards_open_as_one_valid_dask_store(sharded, files):
    from interpret_spectral import open_store, validate_store

    store = open_store(sharded[0])
    validate_store(store)
    q = store["blocks.0.attn"]["q"]
    assert q.chunks is not None and q.chunks[0] == (1, 1, 1, 1)  # lazily, one sample per chunk
    assert [str(s) for s in store["sample"].values] == [f.stem for f in files]
    assert int(store.attrs["complete"]) == 1 and int(store.attrs["samples_requested"]) == 4
    single = open_store(sharded[1])
    np.testing.assert_array_equal(q.values, single["blocks.0.attn"]["q"].values)
    store.close(), single.close()


def test_decompose_of_a_sharded_store_equals_one_file(sharded):
    from interpret_spectral import decompose, decompose_dataset, open_store

    store, single = open_store(sharded[0]), open_store(sharded[1])
    a = decompose(store, graph="qk", n_components=4, progress=False)
    b = decompose(single, graph="qk", n_components=4, progress=False)
    np.testing.assert_array_equal(a["vectors"].values, b["vectors"].values)
    a = decompose_dataset(store, graph="vv", n_components=3, progress=False)
    b = decompose_dataset(single, graph="vv", n_components=3, progress=False)
    np.testing.assert_allclose(np.abs(a["vectors"].values), np.abs(b["vectors"].values), atol=1e-6)
    store.close(), single.close()


def test_plain_xarray_one_liner_of_the_docs(sharded):
    import xarray as xr

    folder = sharded[0]
    # docs/scaling.md: one site of a sharded store in plain xarray
    shards = [folder / s["name"] for s in json.loads((folder / "manifest.json").read_text())["shards"]]
    site = xr.open_mfdataset(shards, group="blocks.0.attn", engine="h5netcdf", phony_dims="sort", combine="nested",
                             concat_dim="sample", data_vars="minimal", coords="minimal", compat="override")
    with xr.open_dataset(sharded[1], group="blocks.0.attn", engine="h5netcdf", phony_dims="sort") as single:
        np.testing.assert_array_equal(site["q"].values, single["q"].values)
    site.close()


def test_incomplete_store_opens_what_is_there_and_resume_lists_the_rest(sharded, tmp_path):
    import shutil

    from interpret_spectral import open_store
    from interpret_spectral.store import require_complete
    from interpret_spectral.store.format import StoreError
    from interpret_spectral.store.shards import missing_shards, seal_sharded_store

    folder = tmp_path / "store"
    shutil.copytree(sharded[0], folder)
    (folder / "shard-00001.h5").unlink()
    assert missing_shards(folder) == [1]
    assert seal_sharded_store(folder)["complete"] is False
    store = open_store(folder)
    assert store.sizes["sample"] == 2 and int(store.attrs["complete"]) == 0
    with pytest.raises(StoreError, match="holds 2 of 4 samples"):
        require_complete(store)
    store.close()


def test_a_shard_of_another_layout_is_refused_in_one_line(sharded, files, tmp_path):
    import shutil

    from interpret_spectral import open_store
    from interpret_spectral.store.format import StoreError
    from interpret_spectral.store.shards import seal_sharded_store

    folder = tmp_path / "store"
    shutil.copytree(sharded[0], folder)
    (folder / "shard-00001.h5").unlink()
    _wait(_write(folder / "shard-00001.h5", files[2:], size=96))  # the same model at another input size
    with pytest.raises(StoreError, match=r"shard .*shard-00001\.h5 does not belong to the store .* differs in "
                                         r"input_shape") as caught:
        seal_sharded_store(folder)
    assert "\n" not in str(caught.value)
    with pytest.raises(StoreError, match="does not belong to the store"):
        open_store(folder)


def test_a_shard_of_other_samples_and_a_folder_without_manifest_are_refused(sharded, tmp_path):
    import shutil

    from interpret_spectral import open_store
    from interpret_spectral.store.format import StoreError
    from interpret_spectral.store.shards import NotAShardedStoreError, missing_shards

    folder = tmp_path / "store"
    shutil.copytree(sharded[0], folder)
    shutil.copy(folder / "shard-00000.h5", folder / "shard-00001.h5")
    with pytest.raises(StoreError, match="does not belong to this store"):
        missing_shards(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(NotAShardedStoreError, match=r"is a folder without manifest\.json, so not a sharded store"):
        open_store(folder)


def test_create_refuses_a_second_plan_and_resumes_the_same(tmp_path):
    from interpret_spectral.store.format import StoreError
    from interpret_spectral.store.shards import create_sharded_store

    create_sharded_store(tmp_path / "s", ["a", "b", "c"], 2)
    with pytest.raises(FileExistsError, match="already holds a sharded store"):
        create_sharded_store(tmp_path / "s", ["a", "b", "c"], 2)
    assert create_sharded_store(tmp_path / "s", ["a", "b", "c"], 2, resume=True)["samples"] == 3
    with pytest.raises(StoreError, match="other samples or another shard size"):
        create_sharded_store(tmp_path / "s", ["a", "b", "c"], 1, resume=True)
    with pytest.raises(ValueError, match="given twice"):
        create_sharded_store(tmp_path / "t", ["a", "a"], 1)

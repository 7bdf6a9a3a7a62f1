"""``run_probe`` and ``run_decompose`` (and their CLI options) on a real LocalCluster and real VOC images.

Two worker processes, one thread each; the model is a tiny random-init timm ViT (seeded,
so every process builds the same one) at 96 px.  One cluster serves every test; the
CLI joins it with ``--scheduler``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from dask_cluster import local_client, tiny_vit

pytest.importorskip("distributed")
pytest.importorskip("timm")

VOC = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc" / "images"
pytestmark = pytest.mark.skipif(not VOC.is_dir(), reason=f"the shared VOC images are not at {VOC}")

N_IMAGES = 4
PROBE = dict(image_size=96, batch_size=2, layers=[0, 5, -1], progress=False)  # 3 of the 12 sites: quick to open


@pytest.fixture(scope="module")
def client():
    yield from local_client()


@pytest.fixture(scope="module")
def files():
    return sorted(VOC.iterdir())[:N_IMAGES]


@pytest.fixture(scope="module")
def single(files, tmp_path_factory):
    """The single-process reference: one store file of the same images, in batches of the same size."""
    import torch

    from interpret_spectral import probe

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("single") / "store.h5"
    probe(tiny_vit(), files, out=path, **PROBE).close()
    return path


@pytest.fixture(scope="module")
def sharded(client, files, tmp_path_factory):
    from interpret_spectral.runner import run_probe

    out = tmp_path_factory.mktemp("sharded") / "store"
    return out, run_probe(files, out, model=tiny_vit, client=client, shard_size=2, **PROBE)


def _same_up_to_sign(a: np.ndarray, b: np.ndarray) -> None:
    """Eigenvectors (sample, y, x, component) equal up to one sign per sample and component."""
    dots = np.einsum("syxc,syxc->sc", a, b)
    signs = np.where(dots < 0, -1.0, 1.0)
    np.testing.assert_allclose(a, b * signs[:, None, None, :], atol=1e-5)


def _assert_same_store(path_a: Path, path_b: Path) -> None:
    """Every site, every array, every coordinate of two stores equal."""
    from interpret_spectral import open_store
    from interpret_spectral.store.reader import site_names

    a, b = open_store(path_a), open_store(path_b)
    try:
        assert site_names(a) == site_names(b) and len(site_names(a)) == 3
        assert [str(s) for s in a["sample"].values] == [str(s) for s in b["sample"].values]
        for node in b.subtree:
            other = a[node.path].to_dataset(inherit=False) if node.path != "/" else a.to_dataset(inherit=False)
            mine = node.to_dataset(inherit=False)
            assert sorted(other.variables) == sorted(mine.variables), node.path
            for name in mine.variables:
                np.testing.assert_array_equal(np.asarray(other[name].values), np.asarray(mine[name].values),
                                              err_msg=f"{node.path}/{name}")
    finally:
        a.close()
        b.close()


def _h5_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file, read with h5py."""
    import h5py

    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset)
                          else None)
    return arrays


def test_run_probe_writes_the_single_process_store_as_shards(sharded, single, files):
    import json

    out, summary = sharded
    ids = [f.stem for f in files]
    assert summary["samples"] == ids and summary["shards"] == 2 and summary["shards_run"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and [s["samples"] for s in manifest["shards"]] == [ids[:2], ids[2:]]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.h5", "shard-00001.h5"]
    _assert_same_store(out, single)


def test_run_probe_zarr_shards_hold_the_single_process_store(client, files, single, tmp_path):
    """shard_format="zarr": zarr v3 shards, opened as one store equal to the HDF5 file."""
    pytest.importorskip("zarr", reason="zarr shards need zarr (the scale extra)")
    from interpret_spectral.runner import run_probe

    out = tmp_path / "store"
    run_probe(files, out, model=tiny_vit, client=client, shard_size=2, shard_format="zarr", **PROBE)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.zarr", "shard-00001.zarr"]
    _assert_same_store(out, single)
    with pytest.raises(ValueError, match="shard_format"):
        run_probe(files, tmp_path / "other", model=tiny_vit, client=client, shard_format="parquet", **PROBE)


def test_run_probe_resume_redoes_only_the_missing_shard(client, files, sharded, single, tmp_path):
    import shutil

    from interpret_spectral.runner import run_probe

    out = tmp_path / "store"
    shutil.copytree(sharded[0], out)
    with pytest.raises(FileExistsError, match="already holds a sharded store"):
        run_probe(files, out, model=tiny_vit, client=client, shard_size=2, **PROBE)
    with pytest.raises(ValueError, match="another probe_options"):
        run_probe(files, out, model=tiny_vit, client=client, shard_size=2, resume=True,
                  **{**PROBE, "image_size": 64})
    (out / "shard-00001.h5").unlink()
    before = (out / "shard-00000.h5").stat().st_mtime_ns
    again = run_probe(files, out, model=tiny_vit, client=client, shard_size=2, resume=True, **PROBE)
    assert again["shards_run"] == 1 and (out / "shard-00000.h5").stat().st_mtime_ns == before
    first, redone = _h5_arrays(sharded[0] / "shard-00001.h5"), _h5_arrays(out / "shard-00001.h5")
    assert sorted(first) == sorted(redone) and len(first) > 10
    for name, array in first.items():
        np.testing.assert_array_equal(redone[name], array, err_msg=name)
    replaced = run_probe(files, out, model=tiny_vit, client=client, shard_size=2, overwrite=True, **PROBE)
    assert replaced["shards_run"] == 2 and (out / "shard-00000.h5").stat().st_mtime_ns != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no staging folder left beside it


def test_run_probe_worker_without_the_model_writes_nothing(client, files, tmp_path):
    from interpret_spectral.runner import WorkerSetupError, run_probe

    # No timm weights are cached on this machine: load_model() on the workers refuses.
    with pytest.raises(WorkerSetupError, match=r"worker could not load the model timm:vit_tiny_patch16_224: "
                                               r"WeightsNotFoundError"):
        run_probe(files, tmp_path / "store", model="timm:vit_tiny_patch16_224", client=client, **PROBE)
    assert not (tmp_path / "store").exists()


def test_unreachable_scheduler_is_one_clear_line(files, single, tmp_path):
    from interpret_spectral.runner import SchedulerUnreachableError, run_decompose, run_probe

    match = r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1:9"
    with pytest.raises(SchedulerUnreachableError, match=match):
        run_probe(files, tmp_path / "store", model=tiny_vit, scheduler="tcp://127.0.0.1:9", connect_timeout=2, **PROBE)
    with pytest.raises(SchedulerUnreachableError, match=match):
        run_decompose(single, tmp_path / "v.nc", scheduler="tcp://127.0.0.1:9", connect_timeout=2, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def reference(single):
    """``decompose`` of the single-file store in this process."""
    from interpret_spectral import open_store
    from interpret_spectral.spectral import decompose

    store = open_store(single)
    try:
        return decompose(store, graph="qk", n_components=4, progress=False)
    finally:
        store.close()


@pytest.mark.parametrize("source", ["single", "sharded"])
def test_run_decompose_equals_decompose(source, client, single, sharded, reference, tmp_path):
    from interpret_spectral.runner import parts_folder, run_decompose
    from interpret_spectral.store.results import open_decomposition

    store = single if source == "single" else sharded[0]
    out = tmp_path / "vectors_qk.nc"
    result = run_decompose(store, out, graph="qk", n_components=4, client=client, shard_size=3, progress=False)
    written = open_decomposition(out)
    assert not parts_folder(out).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["vectors_qk.nc"]
    for got in (result, written):
        assert [str(s) for s in got["sample"].values] == [str(s) for s in reference["sample"].values]
        _same_up_to_sign(got["vectors"].values, reference["vectors"].values)
        np.testing.assert_allclose(got["values"].values, reference["values"].values, rtol=1e-6)
        np.testing.assert_allclose(got["objective"].values, reference["objective"].values, rtol=1e-6)
        for key in ("graph", "solver", "method", "layers", "heads", "grid", "n_components", "n_graphs", "store_model"):
            np.testing.assert_array_equal(got.attrs[key], reference.attrs[key], err_msg=key)
    with pytest.raises(FileExistsError, match="exists"):
        run_decompose(store, out, graph="qk", n_components=4, client=client, progress=False)


def test_run_decompose_resume_redoes_only_the_missing_part(client, single, reference, tmp_path, monkeypatch, caplog):
    import interpret_spectral.runner._decompose as module
    from interpret_spectral.runner import parts_folder, run_decompose

    out = tmp_path / "vectors_qk.nc"
    options = dict(graph="qk", n_components=4, client=client, shard_size=1, progress=False)

    def interrupted(paths):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "_join", interrupted)  # stopped after the tasks, before the join
    with pytest.raises(KeyboardInterrupt):
        run_decompose(single, out, **options)
    monkeypatch.undo()
    parts = parts_folder(out)
    assert not out.exists() and sorted(p.name for p in parts.iterdir()) == [
        "part-00000.nc", "part-00001.nc", "part-00002.nc", "part-00003.nc", "plan.json"]
    with pytest.raises(FileExistsError, match="holds the parts of an interrupted decomposition"):
        run_decompose(single, out, **options)
    with pytest.raises(ValueError, match="parts of another decomposition"):
        run_decompose(single, out, resume=True, **{**options, "n_components": 3})
    (parts / "part-00002.nc").unlink()
    logger = logging.getLogger("interpret_spectral.runner")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="interpret_spectral.runner"):
            result = run_decompose(single, out, resume=True, **options)
    finally:
        logger.removeHandler(caplog.handler)
    assert "1 task(s) of 4 sample(s) to decompose, 3 part(s) already complete" in caplog.text
    assert not parts.exists()
    _same_up_to_sign(result["vectors"].values, reference["vectors"].values)


def test_run_decompose_refuses_a_folder_that_is_not_a_store_and_a_mixed_shard(client, files, sharded, tmp_path):
    import shutil

    from interpret_spectral import probe
    from interpret_spectral.runner import run_decompose
    from interpret_spectral.store.format import StoreError

    with pytest.raises(StoreError, match="without manifest.json"):
        run_decompose(tmp_path, tmp_path / "v.nc", client=client, progress=False)
    mixed = tmp_path / "mixed"
    shutil.copytree(sharded[0], mixed)
    (mixed / "shard-00001.h5").unlink()  # the same samples, recorded at one site only: another layout
    probe(tiny_vit(), files[2:], out=mixed / "shard-00001.h5", **{**PROBE, "layers": [0]}).close()
    with pytest.raises(StoreError, match="shard .*shard-00001.h5 does not belong to the store"):
        run_decompose(mixed, tmp_path / "v.nc", client=client, progress=False)
    assert not (tmp_path / "v.nc").exists()


def test_cli_probe_and_decompose_on_the_cluster(client, files, tmp_path, capsys):
    import torch

    from interpret_spectral.cli import main
    from interpret_spectral.store.results import open_decomposition

    torch.manual_seed(0)
    import timm

    weights = tmp_path / "vit_tiny_patch16_224.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict(), weights)
    address = client.scheduler.address
    model = ["--model", "timm:vit_tiny_patch16_224", "--weights", str(weights), "--image-size", "64", "--layers", "0,-1"]
    store = tmp_path / "store"
    assert main(["probe", *map(str, files), "--out", str(store), "--scheduler", address, "--shard-size", "3",
                 *model, "-q"]) == 0
    assert sorted(p.name for p in store.iterdir()) == ["manifest.json", "shard-00000.h5", "shard-00001.h5"]
    assert main(["decompose", str(store), "--out", str(tmp_path / "cluster.nc"), "--scheduler", address,
                 "--n-components", "3", "-q"]) == 0
    assert main(["decompose", str(store), "--out", str(tmp_path / "one.nc"), "--n-components", "3", "-q"]) == 0
    a, b = open_decomposition(tmp_path / "cluster.nc"), open_decomposition(tmp_path / "one.nc")
    _same_up_to_sign(a["vectors"].values, b["vectors"].values)
    capsys.readouterr()
    assert main(["probe", str(files[0]), "--out", str(tmp_path / "x"), "--shard-size", "2", *model]) == 2
    assert "--shard-size and --shard-format apply with --workers N or --scheduler ADDRESS" in capsys.readouterr().err
    assert main(["probe", str(files[0]), "--out", str(tmp_path / "x"), "--shard-format", "zarr", *model]) == 2
    assert "one store is zarr when --out ends in .zarr" in capsys.readouterr().err
    assert main(["decompose", str(store), "--out", str(tmp_path / "x.nc"), "--workers", "2", "--scheduler",
                 address]) == 2
    assert "not both" in capsys.readouterr().err

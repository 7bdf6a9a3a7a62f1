"""The Dask runner on a real LocalCluster (2 worker processes) and real VOC images.

The model is a tiny random-init timm ViT (seeded, so every process builds the same one)
at 96 px: the point is the runner, not the backbone.  One cluster serves every test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from dask_cluster import local_client, tiny_vit

pytest.importorskip("distributed")
pytest.importorskip("timm")

VOC = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc" / "images"
pytestmark = pytest.mark.skipif(not VOC.is_dir(), reason=f"the shared VOC images are not at {VOC}")

N_IMAGES = 4
OPTIONS = dict(k=3, n_components=4, image_size=96, shard_size=2, progress=False)


@pytest.fixture(scope="module")
def client():
    yield from local_client()


@pytest.fixture(scope="module")
def files():
    return sorted(VOC.iterdir())[:N_IMAGES]


@pytest.fixture(scope="module")
def single(files):
    """The single-process reference: probe in memory, then the pipeline's per-image job."""
    import torch

    from interpret_spectral import probe
    from interpret_spectral.pipeline import AnalyzeSettings, analyze_samples

    torch.set_num_threads(1)
    store = probe(tiny_vit(), files, image_size=96, progress=False)
    settings = AnalyzeSettings(k=3, n_components=4)
    return store, analyze_samples(store, settings, progress=False)


@pytest.fixture(scope="module")
def store_run(client, files, tmp_path_factory):
    from interpret_spectral.runner import run_analyze

    out = tmp_path_factory.mktemp("runner") / "run"
    return out, run_analyze(files, out, model=tiny_vit, client=client, keep="store", **OPTIONS)


def _same_up_to_sign(a: np.ndarray, b: np.ndarray) -> None:
    """Eigenvectors (sample, y, x, component) equal up to one sign per sample and component."""
    dots = np.einsum("syxc,syxc->sc", a, b)
    signs = np.where(dots < 0, -1.0, 1.0)
    np.testing.assert_allclose(a, b * signs[:, None, None, :], atol=1e-4)


def test_runner_gives_the_single_process_results(store_run, single, files):
    from interpret_spectral.store.results import open_decomposition, open_labels

    out, summary = store_run
    _, reference = single
    ids = [f.stem for f in files]
    assert summary["samples"] == ids and summary["shards"] == 2 and summary["keep"] == "store"
    for graph in ("qk", "vv"):
        vectors = open_decomposition(out / f"vectors_{graph}.nc")
        assert [str(s) for s in vectors["sample"].values] == ids
        _same_up_to_sign(vectors["vectors"].values, reference[graph].decomposition["vectors"].values)
        np.testing.assert_allclose(vectors["values"].values, reference[graph].decomposition["values"].values,
                                   rtol=1e-5)
        labels = open_labels(out / f"labels_{graph}.nc")
        np.testing.assert_array_equal(labels.values, reference[graph].labels.values)
        assert set(summary["graphs"][graph]["k"]) == set(ids)


def test_sharded_store_of_the_run_decomposes_as_one_file(store_run, single):
    from interpret_spectral import open_store
    from interpret_spectral.spectral import decompose

    out, _ = store_run
    store = open_store(out / "store")
    reference, _ = single
    assert int(store.attrs["complete"]) == 1 and store.sizes["sample"] == N_IMAGES
    a = decompose(store, graph="vv", n_components=4, progress=False)
    b = decompose(reference, graph="vv", n_components=4, progress=False)
    _same_up_to_sign(a["vectors"].values, b["vectors"].values)
    store.close()


def test_keep_vectors_writes_no_qkv_and_resume_reruns_only_the_missing_shard(client, files, store_run, tmp_path):
    from interpret_spectral.runner import WorkerSetupError, run_analyze
    from interpret_spectral.store.results import open_decomposition

    out = tmp_path / "vectors-only"
    first = run_analyze(files, out, model=tiny_vit, client=client, keep="vectors", **OPTIONS)
    assert not (out / "store").exists() and first["store"] is None and not list(out.rglob("*.h5"))
    kept = open_decomposition(out / "vectors_qk.nc")["vectors"].values
    stored = open_decomposition(store_run[0] / "vectors_qk.nc")["vectors"].values
    np.testing.assert_array_equal(kept, stored)
    with pytest.raises(FileExistsError, match="already holds a run"):
        run_analyze(files, out, model=tiny_vit, client=client, keep="vectors", **OPTIONS)
    shutil.rmtree(out / "shards" / "shard-00001")
    again = run_analyze(files, out, model=tiny_vit, client=client, keep="vectors", resume=True, **OPTIONS)
    assert again["shards_run"] == 1 and again["samples"] == first["samples"]
    assert again["graphs"]["qk"]["values"] == first["graphs"]["qk"]["values"]
    # overwrite replaces only on success: a run that fails leaves this one as it was
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    with pytest.raises(WorkerSetupError):
        run_analyze(files, out, model="timm:vit_tiny_patch16_224", client=client, keep="vectors", overwrite=True,
                    **OPTIONS)
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(out.name + ".partial")] == []
    replaced = run_analyze(files, out, model=tiny_vit, client=client, keep="vectors", overwrite=True, **OPTIONS)
    assert replaced["samples"] == first["samples"] and (out / "summary.json").is_file()


def test_a_worker_killed_mid_run_loses_no_sample(client, files, tmp_path):
    from interpret_spectral import open_store
    from interpret_spectral.runner import run_analyze

    out = tmp_path / "killed"
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = run_analyze(files, out, model=tiny_vit, client=client, keep="store", graphs=("qk",),
                                             **{**OPTIONS, "shard_size": 1})
        except BaseException as error:  # reported by the assertion below
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 240
    while not [p for p in (out / "shards").glob("shard-*") if ".partial-" not in p.name]:
        assert time.monotonic() < deadline and thread.is_alive(), outcome
        time.sleep(0.2)
    victim = sorted(client.run(os.getpid).values())[0]
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=400)
    assert not thread.is_alive() and "error" not in outcome, outcome
    summary = outcome["summary"]
    ids = [f.stem for f in files]
    assert summary["samples"] == ids
    store = open_store(out / "store")
    assert [str(s) for s in store["sample"].values] == ids  # every sample exactly once
    store.close()
    assert victim not in client.run(os.getpid).values()
    manifest = json.loads((out / "store" / "manifest.json").read_text())
    assert manifest["complete"] and all(s["complete"] for s in manifest["shards"])
    assert not list(out.rglob("*.partial-*"))


def test_unreachable_scheduler_is_one_clear_line(files, tmp_path):
    from interpret_spectral.runner import SchedulerUnreachableError, run_analyze

    with pytest.raises(SchedulerUnreachableError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1:9"):
        run_analyze(files, tmp_path / "run", model=tiny_vit, scheduler="tcp://127.0.0.1:9", connect_timeout=2,
                    **OPTIONS)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_worker_that_cannot_load_the_model_is_one_clear_line(client, files, tmp_path):
    from interpret_spectral.runner import WorkerSetupError, run_analyze

    # No timm weights are cached on this machine: load_model() on the workers refuses.
    with pytest.raises(WorkerSetupError, match=r"worker could not load the model timm:vit_tiny_patch16_224: "
                                               r"WeightsNotFoundError"):
        run_analyze(files, tmp_path / "run", model="timm:vit_tiny_patch16_224", client=client, **OPTIONS)
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "run" / "store").exists()


def test_cli_analyze_options_of_the_runner(files, tmp_path, capsys):
    from interpret_spectral.cli import main

    out = str(tmp_path / "run")
    assert main(["analyze", str(files[0]), "--out", out, "--keep", "vectors"]) == 2
    assert "--keep vectors runs on the Dask runner: add --workers N or --scheduler ADDRESS" in capsys.readouterr().err
    assert main(["analyze", str(files[0]), "--out", out, "--workers", "2", "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["analyze", str(files[0]), "--out", out, "--scheduler", "tcp://127.0.0.1:9", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err[0], err

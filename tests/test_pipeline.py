"""The pipeline (the per-image job, shards, the run folder), result files and replace-on-success.

Planted stores (no model) and tiny files: every test here runs in about a second.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from interpret_spectral import pipeline
from interpret_spectral.pipeline import (
    AnalyzeSettings,
    analyze_samples,
    check_run_folder,
    concat_results,
    dataset_kmeans,
    image_files,
    is_run_output,
    summarize,
    write_results,
)
from interpret_spectral.store import atomic
from interpret_spectral.store.atomic import partial_name, replace_dir, replacing_file
from interpret_spectral.store.decomposition import make_decomposition
from interpret_spectral.store.results import ResultFileError, open_decomposition, open_labels, save_netcdf
from interpret_spectral.synthetic import planted_store

DEAD_PID = 2**22 + 12345  # above Linux's default pid_max: no such process


@pytest.fixture(scope="module")
def store() -> xr.DataTree:
    return planted_store(n_samples=3, grids=((6, 6), (3, 3)), n_groups=3, seed=1)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or ".old-" in p.name)


# -- the per-image job --------------------------------------------------------------------------
def test_shards_give_the_same_results_as_one_run(store: xr.DataTree) -> None:
    settings = AnalyzeSettings(graphs=("qk", "vv"), n_components=4, k=3, seed=0)
    whole = analyze_samples(store, settings, progress=False)
    shards = concat_results([analyze_samples(store, settings, samples=part, progress=False) for part in ([0, 1], [2])])
    assert list(whole) == list(shards) == ["qk", "vv"]
    for name in whole:
        a, b = whole[name], shards[name]
        assert a.decomposition["sample"].values.tolist() == b.decomposition["sample"].values.tolist()
        np.testing.assert_allclose(a.decomposition["vectors"].values, b.decomposition["vectors"].values, atol=1e-10)
        np.testing.assert_array_equal(a.labels.values, b.labels.values)
        np.testing.assert_allclose(a.contributions.values, b.contributions.values, atol=1e-10)
    summary = summarize(store, settings, whole)
    assert summary["graphs"]["qk"]["k"] == {"planted-0": 3, "planted-1": 3, "planted-2": 3}
    assert summary["graphs"]["qk"]["meaning"] == "where" and summary["graphs"]["vv"]["meaning"] == "what"
    assert summary["settings"]["graphs"] == ["qk", "vv"] and summary["settings"]["k"] == 3


def test_settings_check_graph_kinds_and_solvers_through_the_registries() -> None:
    with pytest.raises(ValueError, match="kq"):
        AnalyzeSettings(graphs=("kq",))
    with pytest.raises(ValueError, match="solver must be one of"):
        AnalyzeSettings(solver="lanczos-that-does-not-exist")
    assert AnalyzeSettings(graphs=("vv", "qk", "vv")).graph_names == ["vv", "qk"]


def test_k_choice_is_passed_to_segment_and_reported(store: xr.DataTree) -> None:
    settings = AnalyzeSettings(graphs=("qk",), n_components=4, k_range=(2, 3, 4), k_method="silhouette")
    results = analyze_samples(store, settings, samples=[0], progress=False)
    labels = results["qk"].labels
    assert labels.attrs["k_selection"] == "silhouette" and list(labels.attrs["k_range"]) == [2, 3, 4]
    summary = summarize(store, settings, results)
    entry = summary["graphs"]["qk"]
    assert 2 <= entry["k"]["planted-0"] <= 4 and set(entry) >= {"k_score", "silhouette"}
    assert summary["settings"]["k"] == "silhouette" and summary["settings"]["k_range"] == [2, 3, 4]


def test_result_files_round_trip_in_the_one_format(store: xr.DataTree, tmp_path: Path) -> None:
    results = analyze_samples(store, AnalyzeSettings(graphs=("vv",), n_components=3, k=2), progress=False)
    written = write_results(tmp_path, results)
    assert [p.name for p in written] == ["vectors_vv.nc", "labels_vv.nc"]
    back = open_decomposition(tmp_path / "vectors_vv.nc")
    np.testing.assert_array_equal(back["vectors"].values, results["vv"].decomposition["vectors"].values)
    assert back.attrs["producer"] == results["vv"].decomposition.attrs["producer"]
    labels = open_labels(tmp_path / "labels_vv.nc")
    np.testing.assert_array_equal(labels.values, results["vv"].labels.values)
    with pytest.raises(ResultFileError, match="no 'vectors' variable"):
        open_decomposition(tmp_path / "labels_vv.nc")
    with pytest.raises(ResultFileError, match="no 'labels' variable"):
        open_labels(tmp_path / "vectors_vv.nc")
    (tmp_path / "junk.nc").write_bytes(b"not netcdf")
    with pytest.raises(ResultFileError, match="junk.nc is not a netCDF/HDF5 file"):
        open_decomposition(tmp_path / "junk.nc")
    with pytest.raises(ResultFileError, match="is a folder"):
        open_labels(tmp_path)
    assert _leftovers(tmp_path) == []


def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "vectors.nc"
    old = make_decomposition(np.zeros((1, 2, 2, 2)), np.ones((1, 2)), ["a"], producer="test")
    save_netcdf(old, path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        save_netcdf(old, path, overwrite=False)

    def broken(self: xr.Dataset, target: Path, **kwargs: object) -> None:
        Path(target).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    with pytest.raises(OSError, match="disk full"):
        save_netcdf(old, path)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


def test_replacing_file_removes_its_temporary_on_ctrl_c(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with replacing_file(path) as tmp:
            tmp.write_text("half")
            (tmp.parent / f"{tmp.name}.partial").write_text("a writer's own temporary")
            raise KeyboardInterrupt
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


# -- the run folder -----------------------------------------------------------------------------
def _run(out: Path, content: str, *, overwrite: bool = False, resume: bool = False, fail: BaseException | None = None) -> None:
    with pipeline.run_folder(out, overwrite, resume) as staging:
        assert staging == partial_name(out) and staging.is_dir()
        (staging / "store.h5").write_text(content)
        (staging / "summary.json").write_text(json.dumps({"run": content}))
        if fail is not None:
            raise fail


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_overwrite_replaces_a_run_only_on_success(tmp_path: Path, exchange: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    out = tmp_path / "run"
    _run(out, "first")
    (out / "notes.txt").write_text("mine")  # not part of the run: it must survive overwrites
    (out / "labels_old.nc").write_text("a result of the first run")
    with pytest.raises(FileExistsError, match="already holds a run"):
        _run(out, "second")
    for failure in (RuntimeError("a truncated image"), KeyboardInterrupt()):
        with pytest.raises(type(failure)):
            _run(out, "second", overwrite=True, fail=failure)
        assert (out / "store.h5").read_text() == "first" and _leftovers(tmp_path) == []
    _run(out, "third", overwrite=True)
    assert (out / "store.h5").read_text() == "third" and (out / "notes.txt").read_text() == "mine"
    assert not (out / "labels_old.nc").exists()  # every output of the old run went with it
    assert _leftovers(tmp_path) == []


def test_resume_continues_an_interrupted_run_and_keeps_it_when_it_fails_again(tmp_path: Path) -> None:
    out = tmp_path / "run"
    killed = partial_name(out, pid=DEAD_PID)  # what a SIGKILLed run leaves
    killed.mkdir()
    (killed / "store.h5").write_text("two of six samples")
    with pytest.raises(RuntimeError):
        with pipeline.run_folder(out, False, True) as staging:
            assert (staging / "store.h5").read_text() == "two of six samples"
            raise RuntimeError("fails again")
    assert (killed / "store.h5").read_text() == "two of six samples" and not out.exists()
    with pipeline.run_folder(out, False, True) as staging:
        (staging / "store.h5").write_text("six of six samples")
    assert (out / "store.h5").read_text() == "six of six samples" and _leftovers(tmp_path) == []


def test_a_fresh_run_removes_leftovers_of_killed_runs_only_when_it_succeeds(tmp_path: Path) -> None:
    out = tmp_path / "run"
    killed = partial_name(out, pid=DEAD_PID)
    killed.mkdir()
    with pytest.raises(RuntimeError):
        _run(out, "new", fail=RuntimeError("boom"))
    assert killed.is_dir()
    _run(out, "new")
    assert not killed.exists() and (out / "store.h5").read_text() == "new"


def test_check_run_folder_refuses_clashes_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        check_run_folder(tmp_path / "run", overwrite=True, resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        check_run_folder(tmp_path / "file")
    busy = partial_name(tmp_path / "run", pid=1)  # pid 1 always exists
    busy.mkdir()
    with pytest.raises(RuntimeError, match="another run .process 1. is writing"):
        check_run_folder(tmp_path / "run")
    assert is_run_output("store.h5") and is_run_output("figures") and not is_run_output("demo.png")


def test_replace_dir_swaps_a_folder_in(tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "a").write_text("new")
    replace_dir(tmp_path / "new", tmp_path / "final")
    assert (tmp_path / "final" / "a").read_text() == "new" and not (tmp_path / "new").exists()


# -- inputs and dataset-level clustering ---------------------------------------------------------
def test_a_folder_named_like_an_image_is_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "x.png"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "b.png")
    Image.new("RGB", (8, 8)).save(folder / "a.jpg")
    assert [p.name for p in image_files([folder])] == ["a.jpg", "b.png"]
    assert [p.name for p in image_files([folder], limit=1)] == ["a.jpg"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_files([tmp_path / "missing.png"])


def test_dataset_kmeans_shares_cluster_ids_across_images() -> None:
    rows = np.zeros((2, 2, 2, 2))
    rows[0, 0], rows[1, 1] = [1.0, 0.0], [1.0, 0.0]  # the same rows in two images
    rows[0, 1], rows[1, 0] = [0.0, 1.0], [0.0, 1.0]
    labels = dataset_kmeans(xr.DataArray(rows, dims=("sample", "y", "x", "component")), k=2)
    assert labels[0, 0, 0] == labels[1, 1, 0] and labels[0, 1, 0] == labels[1, 0, 0] != labels[0, 0, 0]
    with pytest.raises(ValueError, match="k must be between 1 and the 8 token rows"):
        dataset_kmeans(xr.DataArray(rows, dims=("sample", "y", "x", "component")), k=9)
    rows[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dataset_kmeans(xr.DataArray(rows, dims=("sample", "y", "x", "component")), k=2)


def test_pid_alive() -> None:
    assert atomic.pid_alive(os.getpid()) and not atomic.pid_alive(DEAD_PID)

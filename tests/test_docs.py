"""Every code block in README.md and docs/*.md runs as written.

Each fenced block is labelled:

- ```` ```python ````: run.  The Python blocks of one page run in order in one fresh
  interpreter (later blocks use what earlier ones made, as a reader pasting them would).
- ```` ```bash ````: run, each block in a fresh directory, by ``bash -euo pipefail``.
- ```` ```bash no-run REASON ```` (or ``python no-run REASON``): shown, not run here, with
  the reason (weights that are not on this machine, a GPU, the test suite itself); counted.
- ```` ```text ````: not code (command synopses, outputs, diagrams).
- ```` ```toml ````: a configuration snippet; it must parse.

The directory every block runs in (``_docs_dir`` below) holds what the docs' commands
name: ``.venv`` and ``examples`` (links to the repository's), ``photos/`` with two small
photographs, ``a.jpg`` and ``b.jpg``, and ``data/voc``, a segmentation folder of two
images of the shared VOC data (blocks that use it skip, saying so, when the data is absent).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHARED_VOC = ROOT.parent / "shared" / "data" / "voc"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
RUN = {"python", "bash"}
NOT_CODE = {"text", "toml"}
# Pages whose Python blocks another test runs in its own way (the adapter guide builds one
# adapter block by block and ends with the rebuild check).
TESTED_ELSEWHERE = {"extending.md": "tests/test_extending_doc.py"}
BLOCK_TIMEOUT = 300


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    no_run: str | None  # the reason, for blocks shown but not run
    body: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        info = match.group(1).strip().split(maxsplit=2)
        language = info[0] if info else ""
        no_run = None
        if len(info) > 1 and info[1] == "no-run":
            no_run = info[2].strip() if len(info) > 2 else ""
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(page, line, language, no_run, match.group(2)))
    return found


ALL_BLOCKS = [block for page in PAGES for block in _blocks(page)]
BASH_BLOCKS = [b for b in ALL_BLOCKS if b.language == "bash" and b.no_run is None]
PYTHON_PAGES = sorted(
    {b.page for b in ALL_BLOCKS if b.language == "python" and b.no_run is None and b.page.name not in TESTED_ELSEWHERE}
)


def test_every_block_is_labelled_and_most_run(record_property: pytest.RecordProperty) -> None:
    assert ALL_BLOCKS, "no code blocks found"
    unlabelled = [b.where for b in ALL_BLOCKS if b.language not in RUN | NOT_CODE]
    assert not unlabelled, f"label these blocks python, bash, toml or text (see tests/test_docs.py): {unlabelled}"
    no_reason = [b.where for b in ALL_BLOCKS if b.no_run is not None and len(b.no_run) < 10]
    assert not no_reason, f"a no-run block says why it cannot run here: {no_reason}"
    code = [b for b in ALL_BLOCKS if b.language in RUN]
    not_run = [b for b in code if b.no_run is not None]
    counts = {"blocks": len(ALL_BLOCKS), "code": len(code), "run": len(code) - len(not_run), "no-run": len(not_run)}
    record_property("docs_blocks", counts)
    print(f"docs code blocks: {counts}; not run: " + "; ".join(f"{b.where} ({b.no_run})" for b in not_run))
    assert len(not_run) < counts["run"], f"most docs code must run in CI: {counts}"


def test_toml_blocks_parse() -> None:
    import tomllib

    for block in (b for b in ALL_BLOCKS if b.language == "toml"):
        try:
            tomllib.loads(block.body)
        except tomllib.TOMLDecodeError as error:
            pytest.fail(f"{block.where}: {error}")


def test_docs_never_name_local_paths_of_this_machine() -> None:
    for page in PAGES:
        text = page.read_text()
        assert "../shared" not in text and "DESIGN.md" not in text, f"{page.name} names a path of this machine"


# -- the directory the blocks run in ----------------------------------------------------------------
def _write_photos(directory: Path) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    (directory / "photos").mkdir()
    for name, array in {"astronaut": skimage_data.astronaut(), "coffee": skimage_data.coffee()}.items():
        image = Image.fromarray(array).convert("RGB")
        image.thumbnail((160, 160))
        image.save(directory / "photos" / f"{name}.jpg", quality=90)
    (directory / "a.jpg").write_bytes((directory / "photos" / "astronaut.jpg").read_bytes())
    (directory / "b.jpg").write_bytes((directory / "photos" / "coffee.jpg").read_bytes())


def _write_voc(directory: Path, n_images: int = 2) -> bool:
    """``data/voc``: classes.txt and the first images and masks of the shared VOC folder, linked."""
    if not (SHARED_VOC / "classes.txt").exists():
        return False
    voc = directory / "data" / "voc"
    (voc / "images").mkdir(parents=True)
    (voc / "masks").mkdir()
    (voc / "classes.txt").symlink_to(SHARED_VOC / "classes.txt")
    masks = sorted((SHARED_VOC / "masks").glob("*.png"))[:n_images]
    for mask in masks:
        image = next((SHARED_VOC / "images").glob(f"{mask.stem}.*"))
        (voc / "masks" / mask.name).symlink_to(mask)
        (voc / "images" / image.name).symlink_to(image)
    return len(masks) == n_images


def _docs_dir(directory: Path) -> Path:
    """A fresh directory holding what the docs' commands name (see the module's docstring)."""
    directory.mkdir(parents=True)
    (directory / ".venv").symlink_to(ROOT / ".venv")
    (directory / "examples").symlink_to(ROOT / "examples")
    _write_photos(directory)
    _write_voc(directory)
    return directory


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": "1",  # two blocks run at a time
        "MPLBACKEND": "Agg",
        "HF_HUB_OFFLINE": "1",
    }


_RUNNER = """
import json, sys
namespace = {"__name__": "__main__"}
for where, body in json.load(sys.stdin):
    print(f"--- {where}", flush=True)
    exec(compile(body, where, "exec"), namespace)
"""


@dataclass(frozen=True)
class Run:
    """One unit of docs code (a bash block, or the Python blocks of a page) and how it ended."""

    what: str
    code: str
    seconds: float
    result: subprocess.CompletedProcess[str] | None  # None: skipped (the data it names is absent)


def _units() -> dict[str, tuple[list[str], str | None, str]]:
    """id -> (command, stdin, the code shown)."""
    units: dict[str, tuple[list[str], str | None, str]] = {}
    for block in BASH_BLOCKS:
        units[block.where] = (["bash", "-euo", "pipefail", "-c", block.body], None, block.body)
    for page in PYTHON_PAGES:
        blocks = [b for b in _blocks(page) if b.language == "python" and b.no_run is None]
        stdin = json.dumps([[b.where, b.body] for b in blocks])
        units[page.name] = ([sys.executable, "-c", _RUNNER], stdin, "\n".join(b.body for b in blocks))
    return units


@pytest.fixture(scope="module")
def docs_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every selected runnable unit, each in its own fresh directory, two at a time (CI has 2 cores)."""
    base = tmp_path_factory.mktemp("docs")
    selected = {
        item.callspec.id for item in request.session.items
        if getattr(item, "originalname", "") in {"test_bash_block_runs", "test_python_blocks_run"}
    }
    units = {what: unit for what, unit in _units().items() if what in selected}

    def run(item: tuple[int, tuple[str, tuple[list[str], str | None, str]]]) -> Run:
        number, (what, (command, stdin, code)) = item
        directory = _docs_dir(base / f"unit-{number}")
        if "data/voc" in code and not (directory / "data" / "voc").exists():
            return Run(what, code, 0.0, None)
        start = time.perf_counter()
        result = subprocess.run(command, input=stdin, cwd=directory, env=_env(),
                                capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
        return Run(what, code, time.perf_counter() - start, result)

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {run.what: run for run in pool.map(run, enumerate(units.items()))}
    print("\ndocs blocks, seconds: " + ", ".join(f"{what} {run.seconds:.0f}" for what, run in runs.items()))
    return runs


def _check(run: Run) -> None:
    if run.result is None:
        pytest.skip(f"the shared VOC data is not at {SHARED_VOC}")
    result = run.result
    assert result.returncode == 0, f"{run.what} failed:\n{run.code}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


@pytest.mark.parametrize("block", BASH_BLOCKS, ids=[b.where for b in BASH_BLOCKS])
def test_bash_block_runs(block: Block, docs_runs: dict[str, Run]) -> None:
    _check(docs_runs[block.where])


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=[p.name for p in PYTHON_PAGES])
def test_python_blocks_run(page: Path, docs_runs: dict[str, Run]) -> None:
    _check(docs_runs[page.name])

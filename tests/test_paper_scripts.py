"""Every paper script (examples/paper/) runs with --random-init on the shared data, two at a time.

Each writes its markdown table (``table.md``) and numbers (``results.json``) into
``--out``; scores must be finite and in range.  Sizes are tiny (a random-init model of
the family's class, 1-4 images, few Adam steps) so each run takes seconds.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "examples" / "paper"
DATA = ROOT.parent / "shared" / "data"

# case -> (script, data folder it needs, arguments)
CASES = {
    "table1": ("table1_oracle_voc.py", "voc", ["--images", "2", "--steps", "20"]),
    "table1-sd": ("table1_oracle_voc.py", "voc", ["--model", "sd", "--images", "1", "--steps", "20", "--draws", "3"]),
    "table2": ("table2_sd_ablation.py", "voc", ["--images", "1", "--t-max", "100,500", "--draws", "3"]),
    "figure4": ("figure4_k_sweep.py", "voc", ["--images", "2", "--model", "imgfocus,clip", "--k", "2,4,6"]),
    "table3_5": ("table3_5_unsupervised.py", "camvid", ["--images", "4", "--epochs", "1", "--components", "6",
                                                       "--crf"]),
    "table6": ("table6_timing.py", "voc", ["--images", "2", "--steps", "20"]),
    "table7": ("table7_zero_shot.py", "voc", ["--images", "2"]),
    "table8": ("table8_instances.py", "instances", ["--images", "2"]),
}


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
            "HF_HOME": str(tmp / "hf"), "HF_HUB_CACHE": str(tmp / "hf" / "hub")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    tmp = tmp_path_factory.mktemp("paper")

    def run(case: str) -> tuple[str, subprocess.CompletedProcess[str], Path]:
        script, data, args = CASES[case]
        out = tmp / case
        command = [sys.executable, str(PAPER / script), "--random-init", "--data", str(DATA / data),
                   "--out", str(out), *args]
        return case, subprocess.run(command, capture_output=True, text=True, cwd=tmp, env=_env(tmp),
                                    timeout=300), out

    available = [case for case, (_, data, _) in CASES.items() if (DATA / data).is_dir()]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return {case: (result, out) for case, result, out in pool.map(run, available)}


@pytest.mark.parametrize("case", list(CASES))
def test_paper_script_random_init(case: str, runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]]) -> None:
    if case not in runs:
        pytest.skip(f"../shared/data/{CASES[case][1]} is absent: the script's data is needed")
    result, out = runs[case]
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "table.md").read_text()
    assert "| " in table and "tiny random init" in table
    payload = json.loads((out / "results.json").read_text())
    assert payload["random_init"] is True and payload["rows"]
    numbers = [v for row in payload["rows"] for v in row if isinstance(v, float)]
    assert numbers and all(math.isfinite(v) for v in numbers), payload["rows"]
    if case.startswith(("table1", "table2", "figure4", "table7")):  # mIoU columns
        scores = [v for row in payload["rows"] for v in row[1:] if isinstance(v, float)]
        if case.startswith("table1"):
            scores = [row[1] for row in payload["rows"]]
        assert all(0.0 <= v <= 1.0 for v in scores), scores
    if case == "figure4":
        assert (out / "figure4.png").stat().st_size > 1000
        assert len(payload["curves"]) == 2 and payload["ks"] == [2, 4, 6]
    if case == "table1-sd":
        assert [row[0] for row in payload["rows"]] == ["Multi-layer QK, exact", "Multi-layer QK, adam (20 steps)"]
    if case == "table8":
        assert {row[0] for row in payload["rows"]} == {"ours", "tokencut", "maskcut"}


def test_missing_weights_say_how_to_get_them(tmp_path: Path) -> None:
    if not (DATA / "voc").is_dir():
        pytest.skip("../shared/data/voc is absent")
    result = subprocess.run(
        [sys.executable, str(PAPER / "table1_oracle_voc.py"), "--model", "clip", "--data", str(DATA / "voc"),
         "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=tmp_path, env=_env(tmp_path), timeout=300)
    assert result.returncode != 0
    assert "--random-init" in result.stderr and "hf download" in result.stderr

"""The paper-table examples run end to end on the shared data (CI smoke runs with --quick)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _run(script: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )


def test_what_where_quick_random_init(tmp_path: Path) -> None:
    if not (DATA / "camvid").is_dir():
        pytest.skip("../shared/data/camvid is absent: the CamVid images with masks are needed")
    result = _run("what_where.py", [str(DATA / "camvid"), "--quick", "--random-init", "--out", str(tmp_path / "ww")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("QK", "VV", "features"):
        assert row in result.stdout, result.stdout
    assert "|" in result.stdout  # the markdown table


def test_table1_quick_random_init(tmp_path: Path) -> None:
    if not (DATA / "voc").is_dir():
        pytest.skip("../shared/data/voc is absent: the VOC images with masks are needed")
    result = _run("table1_oracle_voc.py", [str(DATA / "voc"), "--quick", "--random-init", "--image-size", "112"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| Multi-layer QK, exact |" in result.stdout, result.stdout
    assert "MaskCut" in result.stdout and "oracle mIoU" in result.stdout

"""The paper's settings per model family (Appendix B) and the paper models, plus the what/where example."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from interpret_spectral.paper import FAMILIES, family_of, paper_settings, probe_options

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def test_appendix_b_settings() -> None:
    for family in ("dino", "clip"):
        s = paper_settings(family)
        assert (s["short_side"], s["pos_embed"], s["image_size"]) == (448, "bicubic", 448)
    assert paper_settings("sd")["image_size"] == 512 and paper_settings("sd")["grid"] == 64
    mae = paper_settings("mae")
    assert mae["image_size"] == 224 and mae["grid"] == 28  # q/k upsampled from 14 x 14 to the others' 28 x 28
    assert paper_settings("clip")["steps"] == 1000
    assert all(paper_settings(f)["steps"] == 2000 for f in FAMILIES if f != "clip")
    assert {paper_settings(f)["paper_lr"] for f in FAMILIES} <= {3e-4, 1e-3}
    sampling = paper_settings("sd")["sampling"]
    assert sampling == {"t_max": 500, "buffer_size": 5, "refresh": 0.25, "accumulate": 20}
    assert probe_options(paper_settings("mae")) == {"image_size": 224}


def test_settings_are_copies() -> None:
    paper_settings("sd")["sampling"]["t_max"] = 1
    assert paper_settings("sd")["sampling"]["t_max"] == 500


@pytest.mark.parametrize("spec, family", [
    ("timm:vit_base_patch8_224.dino", "dino"), ("hf:facebook/dinov2-small", "dinov2"),
    ("hf:openai/clip-vit-base-patch16", "clip"), ("hf:facebook/vit-mae-base", "mae"),
    ("sd:/models/sd14", "sd"), ("dinov2-s14-imgfocus", "imgfocus"), ("SD", "sd"),
])
def test_family_of_specs(spec: str, family: str) -> None:
    assert family_of(spec) == family


def test_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot tell the paper's model family"):
        paper_settings("timm:resnet50")


@pytest.mark.parametrize("family, cls", [("dino", "VisionTransformer"), ("dinov2", "Dinov2Model"),
                                         ("clip", "CLIPVisionModel"), ("mae", "ViTMAEModel"),
                                         ("sd", "StableDiffusionPipeline")])
def test_random_init_models_are_the_family_class(family: str, cls: str) -> None:
    pytest.importorskip("timm" if family == "dino" else "transformers")
    from interpret_spectral.paper.models import paper_model

    model, label = paper_model(family, random_init=True, image_size=32)
    assert type(model).__name__ == cls and "tiny random init" in label


def test_what_where_quick_random_init(tmp_path: Path) -> None:
    if not (DATA / "camvid").is_dir():
        pytest.skip("../shared/data/camvid is absent: the CamVid images with masks are needed")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "what_where.py"), str(DATA / "camvid"), "--quick", "--random-init",
         "--out", str(tmp_path / "ww")], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("QK", "VV", "features"):
        assert row in result.stdout, result.stdout

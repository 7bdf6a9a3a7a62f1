"""The streaming evaluation job (``interpret-spectral evaluate``) on real VOC images and masks.

A tiny random-init timm ViT keeps it fast; what is checked does not depend on the
weights: memory does not grow with the number of images, labels and figures are
written per image, the scores are exactly ``oracle_miou_per_image`` of the written
labels, and a masks folder without ``classes.txt`` works (oracle and matched mIoU).
"""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interpret_spectral.cli import main
from interpret_spectral.evaluation.folders import MissingClassesError, SegmentationFolder
from interpret_spectral.evaluation.metrics import matched_miou, oracle_miou_per_image
from interpret_spectral.pipeline import AnalyzeSettings, evaluate_labels, evaluate_model
from interpret_spectral.segmentation import upsample_labels
from interpret_spectral.store.results import open_labels

VOC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "voc"
needs_voc = pytest.mark.skipif(not VOC.is_dir(), reason=f"../shared/data is absent: {VOC} not found")
SETTINGS = AnalyzeSettings(graphs=("qk",), n_components=6, k=3)


@pytest.fixture(scope="module")
def tiny_vit() -> object:
    timm = pytest.importorskip("timm")
    import torch

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=96, depth=2).eval()


def _masks_folder(root: Path, stems: list[str], copies: int = 0) -> Path:
    """A segmentation folder of VOC images and masks, without classes.txt (``copies``: extra renamed copies)."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    sources = [(stem, stem) for stem in stems] + [(f"{stems[i % len(stems)]}_copy{i}", stems[i % len(stems)])
                                                  for i in range(copies)]
    for name, stem in sources:
        image = next((VOC / "images").glob(f"{stem}.*"))
        shutil.copy(image, root / "images" / f"{name}{image.suffix}")
        shutil.copy(VOC / "masks" / f"{stem}.png", root / "masks" / f"{name}.png")
    return root


def _vainf(n: int) -> list[str]:
    stems = sorted(p.stem for p in (VOC / "images").glob("vainf_*"))
    return stems[:n]


@needs_voc
def test_masks_folder_without_classes_txt_labels_figures_and_exact_scores(tiny_vit: object, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = _masks_folder(tmp_path / "data", ["labelme_2011_000003", "vainf_0000", "vainf_0001"])
    folder = SegmentationFolder(data)
    assert folder.n_classes is None
    with pytest.raises(MissingClassesError, match="no classes.txt"):
        folder.classes
    voc = SegmentationFolder(VOC)
    expected_classes = 1 + max(int(np.max(m[m != 255], initial=0)) for m in (voc.mask(s) for s in folder.ids))
    assert folder.infer_n_classes() == expected_classes

    out = tmp_path / "out"
    summary = evaluate_model(tiny_vit, data, out, settings=SETTINGS, batch_size=2, matched=True, progress=False)
    written = json.loads((out / "summary.json").read_text())
    assert written == summary
    assert sorted(p.name for p in out.iterdir()) == ["dataset_labels.nc", "figures", "labels", "summary.json"]
    assert summary["images"] == folder.ids and summary["scored"] == 3
    assert summary["k"] == {sid: 3 for sid in folder.ids}

    # The scores are oracle_miou_per_image of the labels written, upsampled to the masks.
    masks = [folder.mask(sid) for sid in folder.ids]
    labels = [open_labels(out / "labels" / f"{sid}.nc") for sid in folder.ids]
    assert [str(lab["sample"].values[0]) for lab in labels] == folder.ids
    predictions = [upsample_labels(lab.isel(sample=0).values, m.shape) for lab, m in zip(labels, masks)]
    direct = oracle_miou_per_image(predictions, masks)
    assert list(summary["oracle_miou_per_image"].values()) == pytest.approx(direct, abs=5e-5)
    assert summary["oracle_miou"] == pytest.approx(direct.mean(), abs=5e-5)
    worst = int(np.argmin(direct))
    assert summary["oracle_miou_worst"] == {"image": folder.ids[worst], "oracle_miou": round(float(direct[worst]), 4)}

    for sid in folder.ids:
        with Image.open(out / "figures" / f"{sid}_segments.png") as figure:
            assert figure.format == "PNG" and min(figure.size) > 100

    # Matched mIoU: classes read from the masks, clusters = the fixed K; equal to matched_miou on the
    # written dataset labels.
    matched = summary["matched"]
    assert (matched["n_classes"], matched["n_clusters"]) == (expected_classes, SETTINGS.k)
    assert matched["classes_from"] == "masks or n_classes"
    clusters = open_labels(out / "dataset_labels.nc")
    assert [str(s) for s in clusters["sample"].values] == folder.ids
    joint = upsample_labels(clusters.values, [m.shape for m in masks])
    reference = matched_miou(joint, masks, n_classes=expected_classes, n_clusters=SETTINGS.k)
    assert matched["miou"] == pytest.approx(reference.miou, abs=5e-5)
    assert set(matched["iou_per_class"]) <= {str(c) for c in range(expected_classes)}

    # The labels folder scores the same again, one file at a time, from the command line.
    report = tmp_path / "again.json"
    capsys.readouterr()
    assert main(["evaluate", str(data), "--labels", str(out / "labels"), "--json", str(report), "-q"]) == 0
    assert f"oracle mIoU: {summary['oracle_miou']:.4f} over 3 images" in capsys.readouterr().out
    again = json.loads(report.read_text())
    assert again["oracle_miou_per_image"] == summary["oracle_miou_per_image"]
    assert again["k"] == summary["k"]

    # An earlier evaluation is kept unless --overwrite; a user's own file in --out survives a replacement.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        evaluate_labels(out / "labels", data, out, progress=False)
    evaluate_labels(out / "labels", data, out, figures=False, overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "summary.json"]


@needs_voc
def test_matched_needs_a_class_count_that_agrees(tiny_vit: object, tmp_path: Path) -> None:
    data = _masks_folder(tmp_path / "data", ["vainf_0000"])
    (data / "classes.txt").write_text("\n".join(SegmentationFolder(VOC).classes) + "\n")
    with pytest.raises(ValueError, match="lists 21 classes"):
        evaluate_model(tiny_vit, data, settings=SETTINGS, matched=True, n_classes=5, progress=False)
    assert main(["evaluate", str(data), "--n-classes", "5", "-q"]) == 2  # only with --matched


def _peak_bytes(model: object, data: Path, out: Path, chunk_size: int | None = None,
                limit: int | None = None) -> tuple[int, dict]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        summary = evaluate_model(model, data, out, settings=SETTINGS, batch_size=2, chunk_size=chunk_size,
                                 limit=limit, figures=False, progress=False)
        return tracemalloc.get_traced_memory()[1], summary
    finally:
        tracemalloc.stop()


@needs_voc
def test_memory_is_flat_in_the_number_of_images(tiny_vit: object, tmp_path: Path) -> None:
    """Peak traced memory over 12 images stays that of 3 (chunks of 2 images): nothing per image is kept.

    Figures are left out for speed (each is drawn and freed per image, see ``_Recorder``).
    The control run holds all 12 images in one chunk and must exceed the bound, so the
    bound is one this measurement can break.
    """
    few = _masks_folder(tmp_path / "few", _vainf(3))
    many = _masks_folder(tmp_path / "many", _vainf(10), copies=2)  # every image 513 x 513 px
    _peak_bytes(tiny_vit, few, tmp_path / "warm", limit=1)  # first-call imports and caches are not the job's memory
    peak_few, summary_few = _peak_bytes(tiny_vit, few, tmp_path / "out_few")
    peak_many, summary_many = _peak_bytes(tiny_vit, many, tmp_path / "out_many")
    assert summary_few["scored"] == 3 and summary_many["scored"] == 12
    assert len(list((tmp_path / "out_many" / "labels").iterdir())) == 12
    # What keeping the 9 extra images would cost: their RGB pixels and masks alone (513 x 513, uint8).
    kept_per_image = 513 * 513 * 4
    bound = 0.25 * 9 * kept_per_image
    assert peak_many - peak_few < bound, (peak_few, peak_many)
    peak_all_at_once, _ = _peak_bytes(tiny_vit, many, tmp_path / "out_control", chunk_size=12)
    assert peak_all_at_once - peak_few > bound, (peak_few, peak_all_at_once)

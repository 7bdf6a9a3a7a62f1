"""Appendix D.2: instance proposals on planted eigenvectors, class-agnostic COCO evaluation."""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pycocotools", reason="COCO evaluation needs pycocotools (the 'coco' extra)")

from interpret_spectral.applications.instances import (  # noqa: E402
    instance_proposals,
    labels_to_proposals,
    planted_instances,
)
from interpret_spectral.evaluation.coco import (  # noqa: E402
    evaluate_instances,
    ground_truth_from_masks,
    proposals_to_results,
)


INSTANCES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "instances"


def _upsampled(mask, factor):
    return np.kron(mask, np.ones((factor, factor), dtype=bool)).astype(bool)


def test_planted_instances_are_found_with_ap_one():
    vectors, truth = planted_instances(size=12, noise=0.05, seed=0)
    found = instance_proposals(vectors, image_sizes=(36, 36))[0]
    assert (found.scores > 0).all() and (np.diff(found.scores) <= 0).all()
    assert found.masks.shape[1:] == (36, 36) and len(found.boxes) == len(found)
    top = {found.grid_masks[i].tobytes() for i in range(2)}
    assert top == {t.tobytes() for t in truth}  # the two objects are the two best proposals
    gt = ground_truth_from_masks({"planted": [_upsampled(t, 3) for t in truth]})
    results = proposals_to_results({"planted": (list(found.masks), list(found.scores))}, gt)
    scores = evaluate_instances(gt, results)
    for iou_type in ("segm", "bbox"):
        assert scores[iou_type]["AP"] == pytest.approx(1.0)
        assert scores[iou_type]["AR@10"] == pytest.approx(1.0)
    box = found.boxes[[i for i in range(2) if found.grid_masks[i].sum() == 9][0]]
    assert box.tolist() == [6.0, 6.0, 9.0, 9.0]  # rows/cols 2..4 of the grid, x3


def test_background_and_tiny_proposals_are_removed():
    vectors, truth = planted_instances(size=12)
    found = instance_proposals(vectors, min_area=0.07)[0]
    sizes = found.grid_masks.sum(axis=(1, 2))
    assert (sizes >= 0.07 * 144).all() and 9 not in sizes.tolist()  # object A (9 cells) is under min_area
    assert all(m[0].sum() + m[-1].sum() == 0 or m[:, 0].sum() + m[:, -1].sum() == 0 for m in found.grid_masks)


def test_coco_evaluation_known_numbers():
    a = np.zeros((20, 20), bool); a[:10, :10] = True
    b = np.zeros((20, 20), bool); b[10:, 10:] = True
    gt = ground_truth_from_masks({"x": [a, b]})
    # One exact hit (score 0.9), one miss (0.8): AP 0.5 at every IoU, AR@1 = AR@10 = 0.5.
    miss = np.zeros((20, 20), bool); miss[:10, 10:] = True
    r = evaluate_instances(gt, proposals_to_results({"x": ([a, miss], [0.9, 0.8])}, gt))
    assert r["segm"]["AP"] == pytest.approx(0.50495, abs=1e-4)  # COCO's 101-point interpolation
    assert r["segm"]["AR@1"] == pytest.approx(0.5) and r["segm"]["AR@100"] == pytest.approx(0.5)
    # Both found: everything 1; the bbox numbers agree.
    r = evaluate_instances(gt, proposals_to_results({"x": ([a, b], [0.9, 0.8])}, gt))
    assert r["segm"]["AP"] == pytest.approx(1.0) and r["bbox"]["AP75"] == pytest.approx(1.0)
    # A half-overlapping mask (IoU 0.5) counts at AP50 only.
    half = np.zeros((20, 20), bool); half[:10, :5] = True
    r = evaluate_instances(ground_truth_from_masks({"x": [a]}), proposals_to_results(
        {"x": ([half], [1.0])}, ground_truth_from_masks({"x": [a]})), iou_types=("segm",))
    assert r["segm"]["AP50"] == pytest.approx(1.0) and r["segm"]["AP75"] == pytest.approx(0.0)
    assert evaluate_instances(gt, [])["segm"]["AR@100"] == 0.0


def test_class_agnostic_on_real_annotations():
    if not INSTANCES.is_dir():
        pytest.skip("../shared/data is absent: no COCO-format instance annotations")
    path = INSTANCES / "annotations.json"
    data = json.loads(path.read_text())
    first = data["images"][0]
    masks, scores = [], []
    from pycocotools import mask as mask_utils
    for annotation in data["annotations"]:
        if annotation["image_id"] == first["id"]:
            rles = mask_utils.frPyObjects(annotation["segmentation"], first["height"], first["width"])
            masks.append(mask_utils.decode(mask_utils.merge(rles)).astype(bool))
            scores.append(1.0)
    results = proposals_to_results({first["file_name"]: (masks, scores)}, data)
    r = evaluate_instances(data, results)
    # The first image's instances found exactly, the other images' missed: recall = their share.
    assert r["segm"]["AR@100"] == pytest.approx(len(masks) / len(data["annotations"]))
    assert 0.0 < r["segm"]["AP50"] < 1.0


def test_labels_to_proposals_orders_by_discovery():
    import xarray as xr
    grid = np.zeros((1, 4, 4), int); grid[0, :2, :2] = 1; grid[0, 2:, 2:] = 2
    labels = xr.DataArray(grid, dims=("sample", "y", "x"), coords={"sample": ["s"]})
    p = labels_to_proposals(labels, image_sizes=[(8, 8)])[0]
    assert p.scores.tolist() == [1.0, 0.5] and p.masks.shape == (2, 8, 8)
    assert p.boxes.tolist() == [[0.0, 0.0, 4.0, 4.0], [4.0, 4.0, 4.0, 4.0]]


def test_bad_arguments():
    vectors, _ = planted_instances()
    with pytest.raises(ValueError, match="k_range"):
        instance_proposals(vectors, k_range=[1])
    with pytest.raises(ValueError, match="min_area"):
        instance_proposals(vectors, min_area=0.5, max_area=0.2)
    with pytest.raises(ValueError, match="image sizes"):
        instance_proposals(vectors, image_sizes=[(4, 4), (4, 4), (4, 4)])


def test_instances_command_on_a_tiny_store(tmp_path, capsys):
    """The CLI end to end: a random-init Dinov2 store, hand-made COCO annotations, the three methods."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from interpret_spectral import probe
    from interpret_spectral.cli import main

    config = transformers.Dinov2Config(hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=48, image_size=56, patch_size=14)
    torch.manual_seed(0)
    model = transformers.Dinov2Model(config).eval()
    store_path = tmp_path / "store.h5"
    probe(model, torch.rand(2, 3, 56, 56), out=store_path, sample_ids=["a", "b"], progress=False).close()
    square = np.zeros((40, 40), bool); square[8:24, 8:24] = True
    gt = ground_truth_from_masks({"images/a.png": [square], "images/b.png": [~square]})
    (tmp_path / "annotations.json").write_text(json.dumps(gt))
    out = tmp_path / "out"
    code = main(["instances", str(tmp_path), "--store", str(store_path), "--n-components", "3", "--out", str(out),
                 "-q"])
    assert code == 0
    table = capsys.readouterr().out
    assert "| ours | segm |" in table and "| maskcut | bbox |" in table
    saved = json.loads((out / "scores.json").read_text())
    assert set(saved["scores"]) == {"ours", "tokencut", "maskcut"}
    for method in saved["scores"]:
        assert 0.0 <= saved["scores"][method]["segm"]["AR@100"] <= 1.0
        entries = json.loads((out / f"proposals_{method}.json").read_text())
        assert all(e["segmentation"]["size"] == [40, 40] for e in entries)
    assert main(["instances", str(tmp_path), "--store", str(store_path), "--methods", "selective-search"]) == 2

"""SegmentationFolder on the real VOC / CamVid folders and on broken layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interpret_spectral.evaluation.folders import MissingClassesError, SegmentationFolder

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _dataset(name: str) -> Path:
    if not (DATA / name).is_dir():
        pytest.skip(f"../shared/data is absent: {DATA / name} not found")
    return DATA / name


@pytest.mark.parametrize(("name", "n_pairs", "n_classes", "first_classes"), [
    ("voc", 13, 21, ["background", "aeroplane", "bicycle"]),
    ("camvid", 101, 11, ["sky", "building", "pole"]),
])
def test_real_folders_native(name: str, n_pairs: int, n_classes: int,
                             first_classes: list[str]) -> None:
    ds = SegmentationFolder(_dataset(name))
    assert len(ds) == n_pairs and len(ds.ids) == n_pairs
    assert len(ds.classes) == n_classes and ds.classes[:3] == first_classes
    for sample in ds:
        assert sample.image.mode == "RGB"
        assert sample.mask.dtype == np.uint8 and sample.mask.ndim == 2
        assert sample.mask.shape == (sample.image.size[1], sample.image.size[0])
        labels = np.unique(sample.mask)
        assert np.all((labels < n_classes) | (labels == 255))
    if name == "camvid":
        assert ds[0].mask.shape == (360, 480)
    assert ds[-1].id == ds.ids[-1]
    assert [s.id for s in ds[1:3]] == ds.ids[1:3]


def test_short_side_and_picie_protocols() -> None:
    root = _dataset("camvid")
    native = SegmentationFolder(root)[0]
    short = SegmentationFolder(root, size=240, protocol="short_side")[0]
    assert short.image.size == (320, 240)          # 480x360 -> short side 240
    assert short.mask.shape == (240, 320)
    # nearest-neighbour masks keep only labels of the original
    assert set(np.unique(short.mask)) <= set(np.unique(native.mask))
    picie = SegmentationFolder(root, protocol="picie")[0]
    assert picie.image.size == (320, 320) and picie.mask.shape == (320, 320)
    # 480x360 -> 426x320, centre crop keeps columns 53..372 of the resized image
    resized = SegmentationFolder(root, size=320, protocol="short_side")[0]
    np.testing.assert_array_equal(picie.mask, resized.mask[:, 53:373])
    small = SegmentationFolder(_dataset("voc"), size=224, crop=200, protocol="picie")[0]
    assert small.image.size == (200, 200) and small.mask.shape == (200, 200)


def _write_pair(root: Path, stem: str, mask_mode: str = "L") -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), (10, 20, 30)).save(root / "images" / f"{stem}.jpg")
    Image.new(mask_mode, (6, 4), 1 if mask_mode == "L" else (1, 1, 1)).save(
        root / "masks" / f"{stem}.png")


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SegmentationFolder(tmp_path / "nowhere")
    _write_pair(tmp_path, "a")
    no_names = SegmentationFolder(tmp_path)  # classes.txt is optional: names only where they are used
    assert no_names.n_classes is None and no_names.infer_n_classes() == 2 and no_names[0].mask.max() == 1
    assert "no classes.txt" in repr(no_names)
    with pytest.raises(MissingClassesError, match="classes.txt"):
        no_names.classes
    (tmp_path / "classes.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        SegmentationFolder(tmp_path)
    (tmp_path / "classes.txt").write_text("background\nthing\n")
    ds = SegmentationFolder(tmp_path)
    assert ds.classes == ["background", "thing"] and ds[0].mask.max() == 1
    assert ds.n_classes == 2 and ds.index("a") == 0 and ds.image_path("a").name == "a.jpg"
    np.testing.assert_array_equal(ds.mask("a"), ds[0].mask)
    with pytest.raises(KeyError, match="no image with stem 'zzz'"):
        ds.index("zzz")
    Image.new("RGB", (6, 4)).save(tmp_path / "images" / "b.png")
    with pytest.raises(ValueError, match=r"have no mask.*\['b'\]"):
        SegmentationFolder(tmp_path)
    (tmp_path / "images" / "b.png").unlink()
    Image.new("L", (6, 4)).save(tmp_path / "masks" / "c.png")
    with pytest.raises(ValueError, match="have no image"):
        SegmentationFolder(tmp_path)
    (tmp_path / "masks" / "c.png").unlink()
    with pytest.raises(IndexError):
        ds[1]
    shutil.rmtree(tmp_path / "masks")
    with pytest.raises(FileNotFoundError, match="lacks masks"):
        SegmentationFolder(tmp_path)


def test_masks_alone_follow_the_protocol_and_count_classes() -> None:
    root = _dataset("camvid")
    folder = SegmentationFolder(root, protocol="picie", size=240)
    first = folder.ids[0]
    np.testing.assert_array_equal(folder.mask(first), folder[0].mask)
    assert folder.infer_n_classes() == 11  # classes.txt when present


def test_bad_masks_and_arguments(tmp_path: Path) -> None:
    _write_pair(tmp_path, "rgb", mask_mode="RGB")
    (tmp_path / "classes.txt").write_text("background\nthing\n")
    with pytest.raises(ValueError, match="single-channel"):
        SegmentationFolder(tmp_path)[0]
    _write_pair(tmp_path, "rgb")
    Image.new("L", (6, 4), 7).save(tmp_path / "masks" / "rgb.png")
    with pytest.raises(ValueError, match=r"holds ids \[7\]"):
        SegmentationFolder(tmp_path)[0]
    Image.new("L", (5, 4), 1).save(tmp_path / "masks" / "rgb.png")
    with pytest.raises(ValueError, match="must match"):
        SegmentationFolder(tmp_path)[0]
    with pytest.raises(ValueError, match="protocol"):
        SegmentationFolder(tmp_path, protocol="stego")
    with pytest.raises(ValueError, match="native"):
        SegmentationFolder(tmp_path, size=320)
    with pytest.raises(ValueError, match="needs size"):
        SegmentationFolder(tmp_path, protocol="short_side")
    with pytest.raises(ValueError, match="larger"):
        SegmentationFolder(tmp_path, size=100, crop=200, protocol="picie")

"""Image files of every common kind are read as the picture a viewer shows; errors name the file.

Images are made in the test and written to ``tmp_path``: 16-bit grayscale PNG, palette
PNG (with a transparent colour), CMYK JPEG, RGBA PNG, an EXIF-rotated JPEG, a truncated
PNG; then aspect-ratio-keeping preprocessing on a 2:1 image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from interpret_spectral import probe
from interpret_spectral.capture.inputs import ImageReadError, list_inputs, load_image
from interpret_spectral.capture.preprocess import preprocess_images, target_size
from interpret_spectral.store.reader import sample_ids
from toy_attention import ToyAdapter, ToyViT


def test_16_bit_grayscale_is_rescaled_not_clipped(tmp_path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (4, 1))  # 32 columns over the 16-bit range
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
        clipped = np.asarray(raw.convert("RGB"))[0, :, 0]
    assert (clipped == 255).sum() >= 30  # what a plain convert("RGB") does: the bug
    rgb = np.asarray(load_image(path))
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 32, 3)
    column = rgb[0, :, 0].astype(int)
    np.testing.assert_array_equal(column, np.rint(np.linspace(0, 255, 32)).astype(int))
    assert (column == 255).sum() == 1 and np.all(np.diff(column) > 0)
    assert np.all(rgb[..., 0] == rgb[..., 2])  # gray


def test_palette_with_transparency_cmyk_and_alpha(tmp_path) -> None:
    palette = Image.new("P", (4, 2))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.info["transparency"] = 1  # colour 1 (blue) is transparent: white on a page
    palette.save(tmp_path / "palette.png", transparency=1)
    rgb = np.asarray(load_image(tmp_path / "palette.png"))
    assert tuple(rgb[0, 0]) == (255, 255, 255) and tuple(rgb[1, 1]) == (255, 0, 0)

    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # cyan 0, magenta + yellow: red
    red = np.asarray(load_image(tmp_path / "cmyk.jpg")).astype(int)
    assert red[..., 0].min() > 200 and red[..., 1].max() < 60 and red[..., 2].max() < 60

    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (0, 0, 0, 255)  # opaque black
    rgba[0, 1] = (0, 0, 0, 0)  # transparent: white
    rgba[1, 0] = (0, 0, 0, 128)  # half: mid gray
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    out = np.asarray(load_image(tmp_path / "alpha.png")).astype(int)
    assert tuple(out[0, 0]) == (0, 0, 0) and tuple(out[0, 1]) == (255, 255, 255)
    assert abs(out[1, 0, 0] - 127) <= 1


def test_exif_orientation_is_applied(tmp_path) -> None:
    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high, stored sideways
    stored[:, :20] = (255, 0, 0)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    image.save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    upright = load_image(tmp_path / "sideways.jpg")
    assert upright.size == (20, 40)  # width, height: portrait, as a viewer shows it
    top = np.asarray(upright)[:10].astype(int)
    assert top[..., 0].mean() > 200 and top[..., 2].mean() < 60  # the red half is on top after rotation


def test_errors_name_the_file(tmp_path) -> None:
    whole = tmp_path / "whole.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole)
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:300])
    with pytest.raises(ImageReadError, match=r"cut\.png.*truncated"):
        load_image(cut)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageReadError, match=r"notes\.png is not an image"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(ImageReadError, match=r"cut\.png"):
        probe(ToyViT().eval(), [whole, cut], adapter=_Resizing, progress=False)


class _Resizing(ToyAdapter):
    def preprocess(self, images):
        return preprocess_images(images, (8, 12), (0.5,) * 3, (0.5,) * 3)


def test_a_folder_named_like_an_image_is_a_folder(tmp_path) -> None:
    folder = tmp_path / "x.png"
    folder.mkdir()
    Image.new("RGB", (12, 8), (10, 20, 30)).save(folder / "a.png")
    (folder / "inner.jpg").mkdir()  # a folder among the images is not an image
    items, is_tensor = list_inputs(folder)
    assert [item.sample_id for item in items] == ["a"] and not is_tensor
    items, _ = list_inputs([folder, tmp_path / "x.png" / "a.png"], ids=["first", "second"])
    assert [item.sample_id for item in items] == ["first", "second"]
    store = probe(ToyViT().eval(), folder, adapter=_Resizing, progress=False)
    assert sample_ids(store) == ["a"]


def test_short_side_keeps_the_aspect_ratio() -> None:
    assert target_size(448, (512, 1024), "short_side", (14, 14)) == (448, 896)
    assert target_size(448, (1024, 512), "short_side", (14, 14)) == (896, 448)
    with pytest.raises(TypeError, match="short side"):
        target_size((448, 448), (10, 20), "short_side")
    images = [Image.new("RGB", (200, 100)), Image.new("RGB", (400, 200))]
    assert preprocess_images(images, 16, (0,) * 3, (1,) * 3, resize="short_side", multiple=(8, 8)).shape == (2, 3, 16, 32)
    with pytest.raises(ValueError, match="must share an aspect ratio"):
        preprocess_images([Image.new("RGB", (200, 100)), Image.new("RGB", (100, 100))], 16, (0,) * 3, (1,) * 3,
                          resize="short_side", multiple=(8, 8))


def test_a_2_to_1_image_gives_a_1_to_2_grid_on_timm_and_hugging_face() -> None:
    timm = pytest.importorskip("timm")
    transformers = pytest.importorskip("transformers")
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 240, 3), dtype=np.uint8))
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=1,
                                                           num_heads=2).eval()
    with pytest.warns(UserWarning, match="configured for 32x32 px inputs and runs on 32x64"):
        store = probe(vit, [wide], image_size=32, resize="short_side", progress=False)
    group = store["blocks.0.attn"]
    assert (group.attrs["grid_h"], group.attrs["grid_w"]) == (4, 8)
    assert store["pixels"].shape == (1, 32, 64, 3)

    config = transformers.Dinov2Config(hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=48, image_size=28, patch_size=14)
    dinov2 = transformers.Dinov2Model(config).eval()
    with pytest.warns(UserWarning, match="Dinov2Model is configured for 28x28 px inputs and runs on 56x112"):
        store = probe(dinov2, [wide], image_size=56, resize="short_side", progress=False)
    group = store["encoder.layer.0.attention"]
    assert (group.attrs["grid_h"], group.attrs["grid_w"]) == (4, 8)


def test_hf_dinov2_configured_for_224_at_448_says_so() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=48, image_size=224, patch_size=14)
    model = transformers.Dinov2Model(config).eval()
    with pytest.warns(UserWarning, match="configured for 224x224 px inputs and runs on 448x448"):
        probe(model, [Image.new("RGB", (50, 40))], progress=False)  # the adapter's default: 448 px

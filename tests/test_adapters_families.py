"""More backbone families, and no silent guesses (torchvision ViT, SigLIP, EVA-02, Swin).

Every family is a tiny random-init model of the real class.  For each: tensor and image
inputs go through the conformance kit (rebuild error < 1e-5 in float32, grid order,
hygiene, hooks == nnsight), the grid and token kinds are the model's, images are
normalised as the family's weights expect, and ``adapter="auto"`` picks the family's
adapter.  Windowed attention (Swin) is refused with the reason and what to do, and the
generic adapters refuse a token layout they cannot tell, naming the option to set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
torchvision = pytest.importorskip("torchvision")

from PIL import Image  # noqa: E402

from interpret_spectral import probe  # noqa: E402
from interpret_spectral.adapters.path import PathAdapter  # noqa: E402
from interpret_spectral.capture.registry import AdapterNotFoundError, resolve_adapter  # noqa: E402
from interpret_spectral.capture.rebuild import rebuild_errors  # noqa: E402
from interpret_spectral.testing import check_adapter  # noqa: E402

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
TINY_HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


# -- tiny models of the real classes ---------------------------------------------------
def _torchvision_vit() -> torch.nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)


def _timm_siglip() -> torch.nn.Module:
    return timm.create_model(
        "vit_base_patch16_siglip_224", pretrained=False, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2
    )


def _hf_siglip() -> torch.nn.Module:
    return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**TINY_HF, image_size=16, patch_size=8))


def _hf_siglip_full() -> torch.nn.Module:
    config = transformers.SiglipConfig(
        text_config=dict(TINY_HF), vision_config=dict(TINY_HF, image_size=16, patch_size=8)
    )
    return transformers.SiglipModel(config)


def _timm_eva() -> torch.nn.Module:
    from timm.models.eva import Eva

    return Eva(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, use_rot_pos_emb=True, ref_feat_shape=(4, 4))


def _timm_eva02(**kwargs: Any) -> torch.nn.Module:
    """EVA-02 tiny: rotary embeddings, SwiGLU, q/v-only bias (the fused qkv module never runs)."""
    return timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=28, depth=2, **kwargs)


# name -> (builder, tensor input size, adapter, grid, prefix token kinds, (mean, std))
FAMILIES: dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, int], str, tuple[int, int], tuple, tuple]] = {
    "torchvision-vit": (_torchvision_vit, (32, 32), "torchvision-vit", (4, 4), ("cls",), IMAGENET),
    "timm-siglip": (_timm_siglip, (32, 32), "timm-vit", (4, 4), (), HALF),
    "hf-siglip": (_hf_siglip, (16, 32), "hf-vision", (2, 4), (), HALF),
    "timm-eva-rope": (_timm_eva, (32, 32), "timm-eva", (4, 4), ("cls",), IMAGENET),
    "timm-eva02": (_timm_eva02, (28, 28), "timm-eva", (2, 2), ("cls",), CLIP),
}


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return FAMILIES[name][0]().eval()


def _images(count: int = 2, size: tuple[int, int] = (40, 60)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(count)]


def _quiet(name: str):
    """HF models run at another size than configured warn (tested in test_adapters_vit)."""
    if FAMILIES[name][1] != (16, 32):
        return _NoWarningExpected()
    return pytest.warns(UserWarning, match="configured for 16x16 px inputs and runs on 16x32")


class _NoWarningExpected:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


# -- every family: auto-detection, grid, token kinds, rebuild --------------------------
@pytest.mark.parametrize("name", list(FAMILIES))
def test_auto_detection_picks_the_family_adapter(name: str) -> None:
    assert resolve_adapter(_build(name)).name == FAMILIES[name][2]


def test_siglip_model_with_its_text_tower_reads_the_vision_tower() -> None:
    adapter = resolve_adapter(_hf_siglip_full().eval())
    assert adapter.name == "hf-vision" and adapter.family == "SiglipVisionModel"
    sites = adapter.sites(torch.zeros(1, 3, 16, 16))
    assert [site.name for site in sites] == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    assert set(sites[0].token_kinds) == {"patch"}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_tensor_inputs_grid_kinds_and_rebuild(name: str) -> None:
    _, size, adapter_name, grid, prefix, _ = FAMILIES[name]
    model = _build(name)
    batch = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with _quiet(name):
        report = check_adapter(model, inputs=batch)
    assert report.adapter == adapter_name
    assert all(report.checks[check] == "passed" for check in ("sites", "rebuild", "grid", "clean", "backends"))
    assert max(report.rebuild.values()) < 1e-5
    sites = resolve_adapter(model).sites(batch)  # sites() runs no forward pass: no size warning
    assert len(sites) == 2
    for site in sites:
        assert site.grid == grid
        assert site.token_kinds == prefix + ("patch",) * (grid[0] * grid[1])


@pytest.mark.parametrize("name", list(FAMILIES))
def test_image_inputs_are_preprocessed_as_the_weights_expect(name: str) -> None:
    _, size, _, _, _, (mean, std) = FAMILIES[name]
    model = _build(name)
    adapter = resolve_adapter(model)
    native = size[0]  # every tiny model is built square; its own size is the height of its tensor case
    colour = (200, 30, 120)
    batch = adapter.preprocess([Image.new("RGB", (70, 50), colour)])
    assert tuple(batch.shape) == (1, 3, native, native)
    expected = (np.array(colour) / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(batch[0, :, 3, 3].numpy(), expected, rtol=1e-5, atol=1e-5)
    report = check_adapter(model, inputs=_images())
    assert report.checks["rebuild"] == "passed" and max(report.rebuild.values()) < 1e-5
    assert report.checks["grid"] == "passed"


def test_timm_siglip_built_from_its_class_takes_mean_and_std() -> None:
    """A bare class has no pretrained_cfg (timm's default is ImageNet): the normalisation can be given."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, class_token=False,
                              global_pool="map").eval()
    adapter = resolve_adapter(model, mean=HALF[0], std=HALF[1])
    batch = adapter.preprocess([Image.new("RGB", (8, 8), (255, 0, 0))])
    assert batch[0, :, 0, 0].tolist() == [1.0, -1.0, -1.0]
    assert set(adapter.sites(batch)[0].token_kinds) == {"patch"}


def test_torchvision_vit_probe_with_images_and_tensor() -> None:
    """The issue's finding: a 1 x 17 grid with the class token as a patch, and images refused."""
    model = _build("torchvision-vit")
    for inputs in (_images(), torch.randn(2, 3, 32, 32)):
        store = probe(model, inputs, layers=[0], progress=False)
        (name,) = store.children
        group = store[name]
        assert (group.attrs["grid_h"], group.attrs["grid_w"]) == (4, 4)
        kinds = group["token_kind"].values
        assert kinds[0] == "cls" and set(kinds[1:]) == {"patch"} and len(kinds) == 17
        assert store.attrs["adapter"] == "torchvision-vit"


def test_torchvision_vit_refuses_other_sizes_and_layout_options() -> None:
    model = _build("torchvision-vit")
    with pytest.raises(ValueError, match=r"runs at 32x32 px only .* resize the input to 32x32"):
        probe(model, torch.randn(1, 3, 48, 48), progress=False)
    with pytest.raises(TypeError, match=r"reads the token layout from the model .* adapter='torch-mha'"):
        resolve_adapter(model, "torchvision-vit", special_tokens=0)


# -- EVA-02: q and k after the rotary embedding ------------------------------------------
def test_eva_records_q_and_k_after_the_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the rotation the rebuild check fails: what is recorded is what the softmax saw."""
    model = _build("timm-eva02")
    batch = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    adapter = resolve_adapter(model)
    assert adapter.describe()["rotary"] == "applied to the recorded q and k"
    rotated = rebuild_errors(adapter, batch)
    assert max(rotated.values()) < 1e-5
    # The module whose code the adapter runs (doctest collection may import adapters/ a second time).
    monkeypatch.setitem(type(adapter)._finish.__globals__, "_rotate", lambda attn, value, rope: value)
    unrotated = rebuild_errors(adapter, batch)
    assert min(unrotated.values()) > 1e-3, unrotated
    monkeypatch.undo()
    # The class token is never rotated: its q equals the q norm's output.
    arrays_q = probe(model, batch, layers=[0], capture=("q",), progress=False)["blocks.0.attn"]["q"].values
    with torch.no_grad():
        x = model.blocks[0].norm1(model._pos_embed(model.patch_embed(batch))[0])
        q_norm = torch.nn.functional.linear(x, model.blocks[0].attn.qkv.weight[:192], model.blocks[0].attn.q_bias)
    expected_cls = q_norm[:, 0].reshape(2, 3, 64)  # eva02 tiny: 3 heads of 64
    np.testing.assert_allclose(arrays_q[:, :, 0], expected_cls.numpy(), rtol=1e-5, atol=1e-5)


def test_eva_sizes() -> None:
    """A fixed-size EVA refuses other sizes (its rotary embedding is cached); a dynamic one runs them."""
    fixed = _build("timm-eva02")
    with pytest.raises(ValueError, match=r"caches its rotary embedding .* dynamic_img_size=True"):
        probe(fixed, torch.randn(1, 3, 42, 28), progress=False)
    torch.manual_seed(0)
    dynamic = _timm_eva02(dynamic_img_size=True).eval()
    with pytest.warns(UserWarning, match="configured for 28x28 px inputs and runs on 28x42"):
        report = check_adapter(dynamic, inputs=torch.randn(2, 3, 28, 42))
    assert max(report.rebuild.values()) < 1e-5 and report.checks["grid"] == "passed"
    site = resolve_adapter(dynamic).sites(torch.zeros(1, 3, 28, 42))[0]
    assert site.grid == (2, 3)


# -- Swin: windowed attention is refused, saying why and what to do ------------------------
def _timm_swin() -> torch.nn.Module:
    return timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=32, embed_dim=16, depths=(1, 1),
        num_heads=(1, 2), window_size=4,
    )


def _hf_swin() -> torch.nn.Module:
    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                     window_size=4)
    return transformers.SwinModel(config)


def _torchvision_swin() -> torch.nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[4, 4])


@pytest.mark.parametrize("build", [_timm_swin, _hf_swin, _torchvision_swin], ids=["timm", "hf", "torchvision"])
def test_swin_is_refused_with_the_reason_and_what_to_do(build: Callable[[], torch.nn.Module]) -> None:
    model = build().eval()
    # Caught by its base class: doctest collection may import adapters/ a second time, which
    # registers a second copy of the adapter and its error class.
    with pytest.raises(AdapterNotFoundError) as info:
        probe(model, torch.randn(1, 3, 32, 32), progress=False)
    assert type(info.value).__name__ == "WindowedAttentionError" and isinstance(info.value, ValueError)
    message = str(info.value)
    assert f"{type(model).__name__} uses windowed attention" in message
    assert "no layer has one image-wide token graph" in message
    assert "plain ViT" in message and "PathAdapter(" in message


# -- no silent guesses: generic adapters refuse a layout they cannot tell ------------------
def test_torch_mha_on_torchvision_vit_names_special_tokens() -> None:
    """17 tokens (a class token and 4 x 4 patches) through the generic adapter: refused, not a 1 x 17 grid."""
    model = _build("torchvision-vit")
    adapter = resolve_adapter(model, "torch-mha")
    with pytest.raises(ValueError, match=r"cannot tell the token layout of 17 tokens.*special_tokens=1 would make a 4x4"):
        adapter.sites(torch.randn(1, 3, 32, 32))
    sites = resolve_adapter(model, "torch-mha", special_tokens=1).sites(torch.randn(1, 3, 32, 32))
    assert sites[0].grid == (4, 4) and sites[0].token_kinds[0] == "cls"


def test_path_adapter_on_eva_names_special_tokens() -> None:
    model = _build("timm-eva-rope")
    spec = PathAdapter(q="blocks.{i}.attn.q_norm", k="blocks.{i}.attn.k_norm", v="blocks.{i}.attn.q_norm",
                       out_proj="blocks.{i}.attn.norm", heads=2)
    with pytest.raises(ValueError, match=r"cannot tell the token layout of 17 tokens.*special_tokens="):
        resolve_adapter(model, spec).sites(torch.randn(1, 3, 32, 32))


def test_path_adapter_on_siglip_names_the_grid() -> None:
    """8 patch tokens of a 2 x 4 SigLIP grid: no square, no guess; the message names grid=."""
    model = _build("hf-siglip")
    layers = "encoder.layers.{i}.self_attn"
    spec = PathAdapter(q=f"{layers}.q_proj", k=f"{layers}.k_proj", v=f"{layers}.v_proj", out_proj=f"{layers}.out_proj",
                       heads=2, call=lambda batch: ((batch,), {"interpolate_pos_encoding": True}))
    with pytest.raises(ValueError, match=r"cannot tell the token layout of 8 tokens.*grid=\(height, width\)"):
        resolve_adapter(model, spec).sites(torch.randn(1, 3, 16, 32))
    grid_given = PathAdapter(q=f"{layers}.q_proj", k=f"{layers}.k_proj", v=f"{layers}.v_proj",
                             out_proj=f"{layers}.out_proj", heads=2, grid=(2, 4),
                             call=lambda batch: ((batch,), {"interpolate_pos_encoding": True}))
    assert resolve_adapter(model, grid_given).sites(torch.randn(1, 3, 16, 32))[0].grid == (2, 4)

"""The conformance kit over every registered adapter, and on deliberately broken ones.

``interpret_spectral.testing.check_adapter`` runs the rebuild check, the token-grid
order, hook and state hygiene (after success and after an exception inside the forward
pass) and hooks-vs-nnsight equality.  Every built-in adapter must pass it on a tiny
random-init model of each family it covers; broken adapters must fail it with a message
that names the failed check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from interpret_spectral.capture import available_adapters, get_adapter_class
from interpret_spectral.capture.contract import split_heads
from interpret_spectral.testing import CHECKS, AdapterCheckError, check_adapter
from test_adapters_mha_path import PATH_SPEC, MHAViT, Stack
from toy_attention import ToyAdapter, ToyViT

TINY_HF = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96)


# -- one tiny model per family: (model, inputs, adapter options) -------------------------
def _timm(**kwargs: Any) -> tuple[nn.Module, Any, dict]:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, **kwargs)
    return model, torch.randn(2, 3, 32, 32), {}


def _timm_deit() -> tuple[nn.Module, Any, dict]:
    from timm.models.deit import VisionTransformerDistilled

    model = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
    return model, torch.randn(2, 3, 32, 48), {}  # a new, non-square size: the dynamic-size mode


def _timm_siglip() -> tuple[nn.Module, Any, dict]:
    import timm

    model = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              embed_dim=32, num_heads=2)  # no class token, attention-pool head
    return model, torch.randn(2, 3, 32, 32), {}


def _timm_eva(**kwargs: Any) -> tuple[nn.Module, Any, dict]:
    import timm

    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=28, depth=2, **kwargs)
    return model, torch.randn(2, 3, 28, 28), {}  # rotary q/k, q/v-only bias


def _torchvision_vit() -> tuple[nn.Module, Any, dict]:
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    return model, torch.randn(2, 3, 32, 32), {}


def _hf(name: str, config_name: str, size: int, patch: int, **extra: Any) -> Callable[[], tuple]:
    def build() -> tuple[nn.Module, Any, dict]:
        transformers = pytest.importorskip("transformers")
        config = getattr(transformers, config_name)(**TINY_HF, image_size=size, patch_size=patch, **extra)
        return getattr(transformers, name)(config), torch.randn(2, 3, size, 2 * size), {}

    return build


def _diffusers_unet() -> tuple[nn.Module, Any, dict]:
    diffusers = pytest.importorskip("diffusers")
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 32), layers_per_block=1,
        down_block_types=("AttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "AttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    return unet, torch.randn(2, 4, 8, 12), {"timesteps": [10, 500]}


def _lens_native() -> tuple[nn.Module, Any, dict]:
    pytest.importorskip("transformer_lens")
    from transformer_lens import TransformerBridge, TransformerBridgeConfig

    config = TransformerBridgeConfig(d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=64, n_ctx=16, d_vocab=50,
                                     act_fn="gelu", attention_dir="bidirectional", seed=0)
    tokens = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    return TransformerBridge.boot_native(config), tokens, {}


def _lens_gpt2_causal() -> tuple[nn.Module, Any, dict]:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("transformer_lens")
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=16, vocab_size=50)
    model = build_bridge_from_module(transformers.GPT2LMHeadModel(config).eval(), "GPT2LMHeadModel", hf_config=config)
    return model, torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1)), {}


def _mha() -> tuple[nn.Module, Any, dict]:
    return MHAViT(), torch.randn(2, 3, 16, 24), {"grid": (4, 6), "special_tokens": 1}


def _mha_sequence_first() -> tuple[nn.Module, Any, dict]:
    return MHAViT(batch_first=False), torch.randn(2, 3, 12, 12), {"special_tokens": 1}


def _path() -> tuple[nn.Module, Any, dict]:
    return Stack(), torch.randn(2, 17, 12), {"adapter": "path", **PATH_SPEC}


# adapter name -> its cases (every family it covers)
CASES: dict[str, dict[str, Callable[[], tuple]]] = {
    "timm-vit": {
        "vit": lambda: _timm(),
        "vit-reg4-qknorm": lambda: _timm(reg_tokens=4, qk_norm=True),
        "deit-distilled-new-size": _timm_deit,
        "siglip-map-pool": _timm_siglip,
    },
    "timm-eva": {"eva02-rope": _timm_eva},
    "torchvision-vit": {"vit": _torchvision_vit},
    "hf-vision": {
        "dinov2": _hf("Dinov2Model", "Dinov2Config", 28, 14),
        "dinov2-registers": _hf("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", 28, 14, num_register_tokens=4),
        "vit": _hf("ViTModel", "ViTConfig", 16, 8),
        "clip-vision": _hf("CLIPVisionModel", "CLIPVisionConfig", 16, 8),
        "vit-mae": _hf("ViTMAEModel", "ViTMAEConfig", 16, 8, mask_ratio=0.0),
        "siglip-vision": _hf("SiglipVisionModel", "SiglipVisionConfig", 16, 8),
    },
    "diffusers": {"unet": _diffusers_unet},
    "transformer-lens": {"native-bridge": _lens_native, "gpt2-causal": _lens_gpt2_causal},
    "torch-mha": {"vit": _mha, "sequence-first": _mha_sequence_first},
    "path": {"stack": _path},
    # Refuses every model it matches (Swin: windowed attention): nothing to record, nothing
    # for the kit to check; the refusal is tested in test_adapters_families.py.
    "windowed-attention": {},
}


def _built_in() -> list[str]:
    return [name for name in available_adapters() if get_adapter_class(name).__module__.startswith("interpret_spectral.adapters")]


def test_every_built_in_adapter_has_conformance_cases() -> None:
    assert set(_built_in()) == set(CASES), "add a tiny model of each new adapter's families to CASES"


@pytest.mark.parametrize(
    ("name", "case"), [(name, case) for name in _built_in() for case in CASES.get(name, {"missing": None})]
)
def test_every_registered_adapter_passes_the_kit(name: str, case: str) -> None:
    torch.manual_seed(0)
    model, inputs, options = CASES[name][case]()
    options = dict(options)
    adapter = options.pop("adapter", None)
    model.eval()
    with pytest.warns(UserWarning, match="configured for") if name == "hf-vision" else _no_op():
        report = check_adapter(model, adapter, inputs, **options)
    assert report.adapter == name
    assert report.checks["rebuild"] == "passed" and max(report.rebuild.values()) < 1e-5
    assert report.checks["grid"] == report.checks["clean"] == report.checks["sites"] == "passed"
    if name == "diffusers":
        assert report.checks["backends"].startswith("skipped: the adapter runs several forward passes")
    else:
        assert report.checks["backends"] == "passed"


class _no_op:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


# -- broken adapters fail, naming the check ----------------------------------------------
class WrongHeadSplit(ToyAdapter):
    """Splits the width as (head_dim, heads) instead of (heads, head_dim)."""

    def assemble(self, site, tapped, capture):
        out = {}
        for name in ("q", "k", "v"):
            value = tapped[f"{site.module}.{name}:output"][0]
            b, n, c = value.shape
            out[name] = value.reshape(b, n, c // site.num_heads, site.num_heads).permute(0, 3, 1, 2)
        return out


class ColumnMajorToyViT(ToyViT):
    """Flattens its patches column by column, while ToyAdapter says row-major."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).transpose(2, 3).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)
        for block in self.blocks:
            tokens = tokens + block(tokens)
        return tokens


class ClsCountedAsPatch(ToyAdapter):
    """Counts the class token as a patch of a 1 x n grid (torchvision vit_b_16 through a generic adapter)."""

    def sites(self, batch):
        sites = super().sites(batch)
        return [
            type(site)(site.name, site.module, site.order, site.num_heads, site.head_dim, site.scale,
                       (1, site.num_tokens), ("patch",) * site.num_tokens)
            for site in sites
        ]


class LeavesAHook(ToyAdapter):
    """Registers a helper hook for the batch and never removes it."""

    def forward_context(self, batch):
        self.model.blocks[0].register_forward_hook(lambda module, args, output: None)
        return super().forward_context(batch)


class LeavesAHookOnError(ToyAdapter):
    """Removes its helper hook after a successful forward pass only (no ``finally``)."""

    def forward_context(self, batch):
        import contextlib

        @contextlib.contextmanager
        def context():
            handle = self.model.blocks[0].register_forward_hook(lambda module, args, output: None)
            yield
            handle.remove()

        return context()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(0))


def test_the_toy_adapter_passes(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    report = check_adapter(ToyViT().eval(), ToyAdapter, images)
    assert set(report.checks) == set(CHECKS) and report.checks["grid"] == "passed"


@pytest.mark.parametrize(
    ("model", "adapter", "check", "message"),
    [
        (ToyViT, WrongHeadSplit, "rebuild", r"differs from the input of the output projection .*wrong head split"),
        (ColumnMajorToyViT, ToyAdapter, "grid", r"changed the first site.s q .* around cell \(row 1.0, col 1.0\).*not the 2x3 grid in row-major"),
        (ToyViT, ClsCountedAsPatch, "grid", r"grid 1x7 does not tile the 8x12 input: is a special token"),
        (ToyViT, LeavesAHook, "clean", r"after a successful capture: module 'blocks.0' has hooks _forward_hooks"),
        (ToyViT, LeavesAHookOnError, "clean", r"after an exception inside the forward pass \(backend='hooks'\).*blocks.0"),
    ],
    ids=["wrong-head-split", "wrong-token-order", "cls-counted-as-patch", "hook-left-behind", "hook-left-on-error"],
)
def test_broken_adapters_fail_naming_the_check(model, adapter, check: str, message: str, images) -> None:
    torch.manual_seed(0)
    with pytest.raises(AdapterCheckError, match=message) as info:
        check_adapter(model().eval(), adapter, images, backends=("hooks",))
    assert info.value.check == check
    assert f"the {check!r} check failed" in str(info.value)


def test_a_changed_model_attribute_is_reported(images: torch.Tensor) -> None:
    class FlipsTraining(ToyAdapter):
        def forward_context(self, batch):
            self.model.blocks[1].scale = 0.5  # changed for the batch, never restored
            return super().forward_context(batch)

    torch.manual_seed(0)
    with pytest.raises(AdapterCheckError, match=r"module 'blocks.1'.scale is 0.5 \(before: 0.35"):
        check_adapter(ToyViT().eval(), FlipsTraining, images, backends=("hooks",), skip=("rebuild", "grid"))


def test_timm_dynamic_size_is_restored_after_an_exception_inside_the_forward_pass() -> None:
    """A fixed-size timm ViT at a new size: the clean check raises inside the forward while the size mode is on."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3).eval()
    state = (model.dynamic_img_size, model.patch_embed.strict_img_size, model.patch_embed.flatten,
             model.patch_embed.output_fmt)
    with pytest.warns(UserWarning, match="configured for 32x32 px inputs and runs on 48x64"):
        report = check_adapter(model, inputs=torch.randn(2, 3, 48, 64))
    assert report.checks["clean"] == "passed"
    assert (model.dynamic_img_size, model.patch_embed.strict_img_size, model.patch_embed.flatten,
            model.patch_embed.output_fmt) == state

    interrupts = 0
    for when in range(1, 6):  # a KeyboardInterrupt at every attention block and during the embedding
        calls = {"n": 0}

        def interrupt(_module, _args, _output, when=when):
            calls["n"] += 1
            if calls["n"] == when:
                raise KeyboardInterrupt

        handles = [m.register_forward_hook(interrupt) for m in (model.patch_embed, *model.blocks)]
        try:
            from interpret_spectral.capture.engine import capture_batch
            from interpret_spectral.capture.registry import resolve_adapter

            adapter = resolve_adapter(model)
            batch = torch.randn(1, 3, 48, 64)
            with pytest.warns(UserWarning):
                capture_batch(adapter, batch, adapter.sites(batch))
        except KeyboardInterrupt:
            interrupts += 1
        finally:
            for handle in handles:
                handle.remove()
        assert (model.dynamic_img_size, model.patch_embed.strict_img_size, model.patch_embed.flatten,
                model.patch_embed.output_fmt) == state
    assert interrupts == 3  # patch_embed and the two blocks


def test_kit_arguments_are_checked(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="unknown checks"):
        check_adapter(ToyViT().eval(), ToyAdapter, images, skip=("nope",))
    with pytest.raises(ValueError, match="backends must be"):
        check_adapter(ToyViT().eval(), ToyAdapter, images, backends=("jax",))
    with pytest.raises(AdapterCheckError, match="inputs= is needed"):
        check_adapter(ToyViT().eval(), ToyAdapter)


def test_split_heads_is_the_contract_layout() -> None:
    x = torch.arange(12.0).reshape(1, 1, 12)
    assert split_heads(x, 3)[0, :, 0].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]

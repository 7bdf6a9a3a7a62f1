"""transformer-lens adapter: hook points blocks.{i}.attn.hook_q|k|v give the attention the model used.

Tiny models built offline: a 4.x ``TransformerBridge`` around the native architecture, around
a random-init Hugging Face GPT-2 (causal) and ViT (a vision model keeps its 2-D grid), and a
hand-written ``HookedRootModule`` with the 3.x hook layout ``(B, N, heads, D)``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

transformer_lens = pytest.importorskip("transformer_lens")
transformers = pytest.importorskip("transformers")

from interpret_spectral.capture.engine import rebuild_errors  # noqa: E402
from test_adapters_mha_path import REL_TOL  # noqa: E402
from transformer_lens import HookedRootModule, TransformerBridge, TransformerBridgeConfig  # noqa: E402
from transformer_lens.hook_points import HookPoint  # noqa: E402
from transformer_lens.model_bridge.sources import build_bridge_from_module  # noqa: E402

from interpret_spectral import probe  # noqa: E402
from interpret_spectral.adapters.lens import TransformerLensAdapter  # noqa: E402
from interpret_spectral.capture.registry import resolve_adapter  # noqa: E402


def _native(**overrides) -> nn.Module:
    config = dict(d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=64, n_ctx=16, d_vocab=50, act_fn="gelu",
                  attention_dir="bidirectional", seed=0)
    config.update(overrides)
    return TransformerBridge.boot_native(TransformerBridgeConfig(**config)).eval()


def _causal_mask(n: int) -> torch.Tensor:
    return torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)


def test_native_bridge_text_tokens_are_a_row() -> None:
    model = _native()
    adapter = resolve_adapter(model)  # adapter="auto"
    assert isinstance(adapter, TransformerLensAdapter)
    tokens = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    sites = adapter.sites(tokens)
    assert [s.name for s in sites] == ["blocks.0.attn", "blocks.1.attn"]
    assert all(s.grid == (1, 7) and s.num_tokens == 7 and (s.num_heads, s.head_dim) == (4, 8) for s in sites)
    assert sites[0].scale == pytest.approx(8 ** -0.5)
    errors = rebuild_errors(adapter, tokens)
    assert max(errors.values()) < REL_TOL, errors
    store = probe(model, tokens, progress=False)
    assert store["blocks.1.attn"]["q"].dims == ("sample", "head", "token", "channel")
    assert store["blocks.1.attn"]["token_x"].values.tolist() == list(range(7))
    assert store.attrs["adapter"] == "transformer-lens" and store.attrs["attention"] == "bidirectional"


def test_grouped_query_attention_repeats_key_value_heads() -> None:
    model = _native(n_key_value_heads=2)
    tokens = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    adapter = resolve_adapter(model)
    errors = rebuild_errors(adapter, tokens)
    assert max(errors.values()) < REL_TOL, errors
    k = probe(model, tokens, progress=False)["blocks.0.attn"]["k"].values
    assert k.shape[1] == 4 and (k[:, 0] == k[:, 1]).all() and not (k[:, 1] == k[:, 2]).all()


def test_rotary_model_without_rotated_hooks_is_refused() -> None:
    model = _native(positional_embedding_type="rotary")
    with pytest.raises(ValueError, match="rotary"):
        resolve_adapter(model).sites(torch.zeros(1, 4, dtype=torch.long))


def test_gpt2_bridge_causal_rebuild() -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=16, vocab_size=50)
    model = build_bridge_from_module(transformers.GPT2LMHeadModel(config).eval(), "GPT2LMHeadModel", hf_config=config)
    adapter = resolve_adapter(model)
    assert adapter.describe()["attention"] == "causal"
    tokens = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(2))
    errors = rebuild_errors(adapter, tokens, mask=_causal_mask)
    assert max(errors.values()) < REL_TOL, errors
    unmasked = rebuild_errors(adapter, tokens)
    assert min(unmasked.values()) > 1e-2  # the check can fail: without the causal mask it does


def test_vit_bridge_keeps_its_patch_grid() -> None:
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, image_size=16, patch_size=4)
    model = build_bridge_from_module(transformers.ViTModel(config).eval(), "ViTModel", hf_config=config)
    adapter = resolve_adapter(model)
    images = torch.randn(2, 3, 16, 16)
    sites = adapter.sites(images)
    assert all(s.grid == (4, 4) and s.token_kinds == ("cls",) + ("patch",) * 16 for s in sites)
    errors = rebuild_errors(adapter, images)
    assert max(errors.values()) < REL_TOL, errors
    assert adapter.describe()["attention"] == "bidirectional"


class _Attention(nn.Module):
    """3.x-style attention: hook values (B, N, heads, D), a divisor attn_scale, weights as einsum parameters."""

    def __init__(self, d_model: int, heads: int, d_head: int) -> None:
        super().__init__()
        self.W_Q, self.W_K, self.W_V = (nn.Parameter(torch.randn(heads, d_model, d_head) / 4) for _ in range(3))
        self.W_O = nn.Parameter(torch.randn(heads, d_head, d_model) / 4)
        self.attn_scale = math.sqrt(d_head) * 1.5
        self.hook_q, self.hook_k, self.hook_v, self.hook_z = HookPoint(), HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (hook(torch.einsum("bnm,hmd->bnhd", x, w))
                   for hook, w in ((self.hook_q, self.W_Q), (self.hook_k, self.W_K), (self.hook_v, self.W_V)))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / self.attn_scale
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v))
        return torch.einsum("bqhd,hdm->bqm", z, self.W_O)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _Attention(12, 3, 5)
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_resid_post(x + self.attn(x))


class TinyHooked(HookedRootModule):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 12)
        self.blocks = nn.ModuleList(_Block() for _ in range(2))
        self.setup()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.embed(pixels.flatten(2).transpose(1, 2))  # (B, 3, H, W) -> one token per pixel
        for block in self.blocks:
            x = block(x)
        return x


def test_any_hooked_root_module_with_the_3x_layout() -> None:
    torch.manual_seed(0)
    model = TinyHooked().eval()
    adapter = resolve_adapter(model)
    assert isinstance(adapter, TransformerLensAdapter)
    pixels = torch.randn(2, 3, 3, 4)
    adapter = TransformerLensAdapter(model, grid=(3, 4))
    sites = adapter.sites(pixels)
    assert all((s.num_heads, s.head_dim, s.grid) == (3, 5, (3, 4)) for s in sites)
    assert sites[0].scale == pytest.approx(1 / (math.sqrt(5) * 1.5))
    errors = rebuild_errors(adapter, pixels)
    assert max(errors.values()) < REL_TOL, errors
    store = probe(model, pixels, adapter=adapter, capture=("q", "features"), progress=False)
    with torch.no_grad():
        expected = model(pixels)
    torch.testing.assert_close(torch.from_numpy(store["blocks.1.attn"]["features"].values), expected)

"""nn.MultiheadAttention and path adapters: what they record is what the attention used.

The rebuild check of every adapter (DESIGN.md): ``softmax(q k^T * scale) v``, rebuilt from
the recorded q, k, v, equals the input of the layer's output projection.
The check itself is :func:`interpret_spectral.probe.rebuild_errors`.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

from interpret_spectral import probe
from interpret_spectral.adapters.mha import MultiheadAttentionAdapter
from interpret_spectral.adapters._tokens import token_layout
from interpret_spectral.adapters.path import PathAdapter
from interpret_spectral.capture.engine import capture_batch, rebuild_errors
from interpret_spectral.capture.registry import resolve_adapter
from interpret_spectral.testing import check_adapter

REL_TOL = 1e-5


def no_hooks_left(model: nn.Module) -> bool:
    """No forward (pre-)hooks on any module of ``model``."""
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# -- models ---------------------------------------------------------------------------
class MHAViT(nn.Module):
    """Patchify, prepend a class token, two pre-norm blocks of nn.MultiheadAttention."""

    def __init__(self, dim: int = 16, heads: int = 4, depth: int = 2, batch_first: bool = True) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.attns = nn.ModuleList(nn.MultiheadAttention(dim, heads, batch_first=batch_first) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), self.embed(x).flatten(2).transpose(1, 2)], dim=1)
        for norm, attn in zip(self.norms, self.attns):
            h = norm(tokens)
            if not self.batch_first:
                h = h.transpose(0, 1)
            out = attn(h, h, h, need_weights=False)[0]
            tokens = tokens + (out if self.batch_first else out.transpose(0, 1))
        return tokens


class CrossStreams(nn.Module):
    """Self-attention on x, then cross-attention from x to a same-length second stream of another width,
    then cross-attention to a longer memory (not one token axis: left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.context = nn.Linear(16, 6)
        self.memory = nn.Parameter(torch.randn(1, 5, 16))
        self.self_attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.cross = nn.MultiheadAttention(16, 2, kdim=6, vdim=6, batch_first=True)
        self.to_memory = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(x, x, x)[0]
        x = x + self.cross(x, self.context(x).tanh(), self.context(x).tanh())[0]
        memory = self.memory.expand(len(x), -1, -1)
        return x + self.to_memory(x, memory, memory)[0]


class SeparateQKV(nn.Module):
    """A custom attention no adapter knows: q, k, v, a q norm after the head split, and an output projection."""

    def __init__(self, dim: int = 12, heads: int = 3) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(dim // heads)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q_norm(self.q_proj(x).reshape(b, n, self.heads, -1).transpose(1, 2))
        k, v = (f(x).reshape(b, n, self.heads, -1).transpose(1, 2) for f in (self.k_proj, self.v_proj))
        attn = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)
        return self.out(attn.transpose(1, 2).reshape(b, n, c))


class Stack(nn.Module):
    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SeparateQKV() for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


PATH_SPEC = dict(
    q="layers.{i}.q_norm", k="layers.{i}.k_proj", v="layers.{i}.v_proj", out_proj="layers.{i}.out",
    heads=3, scale=0.3, special_tokens=1, features="layers.{i}",
)


# -- nn.MultiheadAttention ------------------------------------------------------------
@pytest.mark.parametrize("batch_first", [True, False])
def test_mha_rebuild_and_grid(batch_first: bool) -> None:
    torch.manual_seed(0)
    model = MHAViT(batch_first=batch_first).eval()
    adapter = resolve_adapter(model, grid=(4, 6), special_tokens=1)  # adapter="auto"
    assert isinstance(adapter, MultiheadAttentionAdapter)
    batch = torch.randn(2, 3, 16, 24)  # a 4 x 6 patch grid and a class token
    sites = adapter.sites(batch)
    assert [s.name for s in sites] == ["attns.0", "attns.1"]
    assert all(s.grid == (4, 6) and s.token_kinds[:2] == ("cls", "patch") and s.head_dim == 4 for s in sites)
    report = check_adapter(model, inputs=batch, grid=(4, 6), special_tokens=1, backends=("hooks",))
    assert all(outcome == "passed" for outcome in report.checks.values() if outcome != "skipped: nnsight not asked for")
    assert max(report.rebuild.values()) < REL_TOL, report.rebuild
    # the routing is gone afterwards: forward is the class's again, no hooks
    assert all("forward" not in vars(m) for m in model.modules()) and no_hooks_left(model)


def test_mha_token_layout_is_never_guessed() -> None:
    model = MHAViT().eval()
    # 9 patches + cls: 10 tokens, not a square; the adapter refuses and names the option to set
    with pytest.raises(ValueError, match=r"cannot tell the token layout of 10 tokens.*special_tokens=1 would make a 3x3"):
        resolve_adapter(model).sites(torch.randn(1, 3, 12, 12))
    row = resolve_adapter(model, grid=(1, 10)).sites(torch.randn(1, 3, 12, 12))[0]
    assert row.grid == (1, 10) and row.token_kinds == ("patch",) * 10
    square = resolve_adapter(model, special_tokens=1).sites(torch.randn(1, 3, 12, 12))[0]
    assert square.grid == (3, 3) and square.token_kinds[0] == "cls"
    assert token_layout(16)[0] == (4, 4)
    with pytest.raises(ValueError, match="grid=.*for a sequence"):
        token_layout(10, special_tokens=0)
    with pytest.raises(ValueError, match="does not hold"):
        resolve_adapter(model, grid=(2, 2), special_tokens=1).sites(torch.randn(1, 3, 12, 12))
    with pytest.raises(ValueError, match="cannot tell the token layout"):
        resolve_adapter(model, grid=(2, 2)).sites(torch.randn(1, 3, 12, 12))


def test_mha_cross_attention_with_separate_projection_weights() -> None:
    torch.manual_seed(0)
    model = CrossStreams().eval()
    assert not model.cross._qkv_same_embed_dim  # kdim/vdim differ: q/k/v_proj_weight
    adapter = resolve_adapter(model)
    batch = torch.randn(2, 9, 16)
    sites = adapter.sites(batch)
    assert [s.name for s in sites] == ["self_attn", "cross"]  # to_memory attends over 5 tokens: left out
    errors = rebuild_errors(adapter, batch)
    assert max(errors.values()) < REL_TOL, errors
    arrays, _ = capture_batch(adapter, batch, sites)
    assert not torch.allclose(arrays["cross"]["k"], arrays["self_attn"]["k"])


def test_mha_model_output_unchanged_and_bare_module() -> None:
    torch.manual_seed(0)
    model = MHAViT().eval()
    x = torch.randn(2, 3, 16, 16)
    adapter = resolve_adapter(model, special_tokens=1)
    sites = adapter.sites(x)
    with torch.no_grad():
        expected = model(x)
        with adapter.forward_context(x):
            routed = model(x)
    torch.testing.assert_close(routed, expected, rtol=1e-5, atol=1e-6)

    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    store = probe(mha, torch.randn(3, 4, 8), progress=False)
    assert list(store.children) == ["attention"] and store["attention"]["q"].shape == (3, 2, 4, 4)
    assert store.attrs["adapter"] == "torch-mha"
    assert len(sites) == 2


def test_mha_exception_inside_forward_restores_the_model() -> None:
    model = MHAViT().eval()
    calls = {"n": 0}

    def explode(_module, _args, _output):
        calls["n"] += 1
        if calls["n"] == 2:  # the first call is the dry run that finds the sites
            raise RuntimeError("boom inside forward")

    handle = model.norms[1].register_forward_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            probe(model, torch.randn(2, 3, 8, 8), special_tokens=1, progress=False)
    finally:
        handle.remove()
    assert calls["n"] == 2
    assert all("forward" not in vars(m) for m in model.modules())
    assert no_hooks_left(model)


def test_mha_nnsight_wrapped_model_gives_the_same_store() -> None:
    nnsight = pytest.importorskip("nnsight")
    torch.manual_seed(0)
    model = MHAViT().eval()
    x = torch.randn(2, 3, 16, 16)
    by_hooks = probe(model, x, special_tokens=1, progress=False)
    by_nnsight = probe(nnsight.NNsight(model), x, special_tokens=1, backend="nnsight", progress=False)
    for name in ("attns.0", "attns.1"):
        for var in ("q", "k", "v"):
            np.testing.assert_array_equal(by_nnsight[name][var].values, by_hooks[name][var].values)
    errors = rebuild_errors(resolve_adapter(model, special_tokens=1), x, backend="nnsight")
    assert max(errors.values()) < REL_TOL, errors


# -- PathAdapter ----------------------------------------------------------------------
def test_path_adapter_rebuild_features_and_names() -> None:
    torch.manual_seed(0)
    model = Stack().eval()
    x = torch.randn(2, 17, 12)  # a class token and a 4 x 4 grid
    adapter = resolve_adapter(model, "path", **PATH_SPEC)
    sites = adapter.sites(x)
    assert [s.name for s in sites] == ["layers.0", "layers.1", "layers.2"]
    assert all(s.grid == (4, 4) and s.token_kinds[0] == "cls" and s.scale == 0.3 and s.head_dim == 4 for s in sites)
    errors = rebuild_errors(adapter, x)
    assert max(errors.values()) < REL_TOL, errors
    store = probe(model, x, adapter="path", capture=("q", "k", "v", "features"), progress=False, **PATH_SPEC)
    with torch.no_grad():
        expected = model.layers[0](x)
    np.testing.assert_allclose(store["layers.0"]["features"].values, expected.numpy(), rtol=1e-6, atol=1e-6)
    assert store.attrs["adapter"] == "path"


def test_path_adapter_spec_binds_to_the_probed_model() -> None:
    torch.manual_seed(0)
    model = Stack().eval()
    x = torch.randn(2, 17, 12)
    spec = PathAdapter(**PATH_SPEC)
    assert spec.model is None
    store = probe(model, x, adapter=spec, progress=False)
    reference = probe(model, x, adapter=spec.bind(model), progress=False)
    assert list(store.children) == ["layers.0", "layers.1", "layers.2"]
    np.testing.assert_array_equal(store["layers.2"]["q"].values, reference["layers.2"]["q"].values)
    with pytest.raises(RuntimeError, match="spec without a model"):
        spec.sites(x)


def test_path_adapter_fused_qkv_with_norm_overrides_reads_a_timm_vit() -> None:
    """qkv= plus q=/k= overrides reproduce the timm adapter's store, and the rebuild check holds."""
    pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, qk_norm=True).eval()
    x = torch.randn(2, 3, 32, 32)
    spec = PathAdapter(
        qkv="blocks.{i}.attn.qkv", q="blocks.{i}.attn.q_norm", k="blocks.{i}.attn.k_norm",
        out_proj="blocks.{i}.attn.norm", heads=3, special_tokens=1,
    )
    adapter = spec.bind(model)
    errors = rebuild_errors(adapter, x)
    assert max(errors.values()) < REL_TOL, errors
    by_path = probe(model, x, adapter=adapter, progress=False)
    by_timm = probe(model, x, adapter="timm-vit", progress=False)
    assert list(by_path.children) == list(by_timm.children) == ["blocks.0.attn", "blocks.1.attn"]
    for var in ("q", "k", "v"):
        np.testing.assert_array_equal(by_path["blocks.1.attn"][var].values, by_timm["blocks.1.attn"][var].values)
    np.testing.assert_array_equal(by_path["blocks.1.attn"]["token_y"].values, by_timm["blocks.1.attn"]["token_y"].values)


def test_path_adapter_nnsight_backend() -> None:
    nnsight = pytest.importorskip("nnsight")
    torch.manual_seed(0)
    model = Stack().eval()
    x = torch.randn(2, 17, 12)
    wrapped = nnsight.NNsight(model)
    by_nnsight = probe(wrapped, x, adapter=PathAdapter(**PATH_SPEC), backend="nnsight", progress=False)
    by_hooks = probe(model, x, adapter=PathAdapter(**PATH_SPEC), progress=False)
    for var in ("q", "k", "v"):
        np.testing.assert_array_equal(by_nnsight["layers.1"][var].values, by_hooks["layers.1"][var].values)
    errors = rebuild_errors(PathAdapter(model, **PATH_SPEC), x, backend="nnsight")
    assert max(errors.values()) < REL_TOL, errors


def test_path_adapter_errors_say_what_to_fix() -> None:
    model = Stack()
    with pytest.raises(ValueError, match="k, v missing"):
        PathAdapter(q="layers.{i}.q_proj", heads=3)
    with pytest.raises(ValueError, match="different numbers of layers"):
        PathAdapter(model, q="layers.{i}.q_proj", k="layers.0.k_proj", v="layers.{i}.v_proj", heads=3)
    with pytest.raises(ValueError, match="no module 'blocks.0.q'"):
        PathAdapter(model, q="blocks.{i}.q", k="layers.{i}.k_proj", v="layers.{i}.v_proj", heads=3)
    with pytest.raises(ValueError, match="not divisible"):
        PathAdapter(model, q="layers.{i}.q_proj", k="layers.{i}.k_proj", v="layers.{i}.v_proj", heads=5).sites(
            torch.randn(1, 4, 12)
        )
    adapter = PathAdapter(model, q="layers.{i}.q_proj", k="layers.{i}.k_proj", v="layers.{i}.v_proj", heads=3)
    site = adapter.sites(torch.randn(1, 4, 12))[0]
    with pytest.raises(ValueError, match="out_proj="):
        adapter.output_tap(site)
    assert not PathAdapter.matches(model)

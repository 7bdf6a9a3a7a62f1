"""A tiny attention model and its adapter, for engine and store tests that need no backbone library."""

from __future__ import annotations

import torch
from torch import nn

from interpret_spectral.capture.contract import Adapter, AttentionSite, Tap, split_heads


class ToyAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = (dim // heads) ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(f(x), self.heads) for f in (self.q, self.k, self.v))
        attn = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        out = (attn @ v).permute(0, 2, 1, 3).flatten(2)
        return self.proj(out)


class ToyViT(nn.Module):
    """Patchify (B, 3, H, W) with 4-pixel patches, prepend a CLS token, run attention blocks."""

    def __init__(self, dim: int = 16, heads: int = 2, depth: int = 2, patch: int = 4) -> None:
        super().__init__()
        self.patch = patch
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList(ToyAttention(dim, heads) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)
        for block in self.blocks:
            tokens = tokens + block(tokens)
        return tokens


class ToyAdapter(Adapter):
    """Adapter of :class:`ToyViT` (not registered: tests pass it explicitly)."""

    name = "toy"

    @classmethod
    def matches(cls, model: object) -> bool:
        return isinstance(model, ToyViT)

    def sites(self, batch: torch.Tensor) -> list[AttentionSite]:
        grid = (batch.shape[-2] // self.model.patch, batch.shape[-1] // self.model.patch)
        sites = []
        for i, block in enumerate(self.model.blocks):
            dim = block.q.out_features
            sites.append(
                AttentionSite(
                    f"blocks.{i}", f"blocks.{i}", i, block.heads, dim // block.heads, block.scale, grid,
                    ("cls",) + ("patch",) * (grid[0] * grid[1]),
                )
            )
        return sites

    def taps(self, site: AttentionSite, capture) -> list[Tap]:
        taps = [Tap(f"{site.module}.{name}") for name in ("q", "k", "v") if name in capture]
        if "features" in capture:
            taps.append(Tap(site.module))
        return taps

    def assemble(self, site, tapped, capture):
        out = {}
        for name in ("q", "k", "v"):
            if name in capture:
                out[name] = split_heads(tapped[f"{site.module}.{name}:output"][0], site.num_heads)
        if "features" in capture:
            out["features"] = tapped[f"{site.module}:output"][0]
        return out

    def output_tap(self, site: AttentionSite) -> Tap:
        return Tap(f"{site.module}.proj", "input")

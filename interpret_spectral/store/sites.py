"""Attention sites as a store records them: one attention layer, its heads and its token grid.

Adapters (in the capture layer) describe a model's attention layers with
:class:`AttentionSite`; the store writes one group per site with these attributes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["AttentionSite", "TOKEN_KINDS", "CAPTURABLE"]

TOKEN_KINDS = ("patch", "cls", "register", "distillation", "text", "other")
CAPTURABLE = ("q", "k", "v", "features")


@dataclasses.dataclass(frozen=True)
class AttentionSite:
    """One attention layer as the store sees it.

    Parameters
    ----------
    name : str
        Stable name used as the store group, e.g. ``"blocks.3.attn"``.
    module : str
        Dotted path of the attention module inside the model.
    order : int
        Position in forward order (0 is the first attention layer).
    num_heads, head_dim : int
        Heads and channels per head of ``q``/``k``/``v``.
    scale : float
        Softmax scale the layer applies to ``q k^T`` (usually ``head_dim ** -0.5``).
    grid : tuple of int
        ``(grid_h, grid_w)`` of the patch tokens, row-major.
    token_kinds : tuple of str
        Kind of every token in sequence order: ``"patch"`` for grid tokens, and
        ``"cls"``, ``"register"``, ``"distillation"``, ``"text"`` or ``"other"``.
        Patch tokens appear in row-major grid order.

    Examples
    --------
    >>> site = AttentionSite("blocks.0.attn", "blocks.0.attn", 0, 6, 64, 0.125,
    ...                      (2, 2), ("cls", "patch", "patch", "patch", "patch"))
    >>> site.num_tokens, site.token_yx()[0].tolist()
    (5, [-1, 0, 0, 1, 1])
    """

    name: str
    module: str
    order: int
    num_heads: int
    head_dim: int
    scale: float
    grid: tuple[int, int]
    token_kinds: tuple[str, ...]

    def __post_init__(self) -> None:
        n_patch = sum(1 for kind in self.token_kinds if kind == "patch")
        if n_patch != self.grid[0] * self.grid[1]:
            raise ValueError(
                f"site {self.name!r}: {n_patch} patch tokens do not fill the grid "
                f"{self.grid[0]}x{self.grid[1]}; the adapter must give one 'patch' kind per grid cell"
            )
        unknown = set(self.token_kinds) - set(TOKEN_KINDS)
        if unknown:
            raise ValueError(f"site {self.name!r}: unknown token kinds {sorted(unknown)}; use {TOKEN_KINDS}")

    @property
    def num_tokens(self) -> int:
        """Number of tokens in the sequence (patch and special)."""
        return len(self.token_kinds)

    def token_yx(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of every token on the grid, ``-1`` for special tokens.

        Returns
        -------
        token_y, token_x : numpy.ndarray of int32
        """
        kinds = np.asarray(self.token_kinds)
        token_y = np.full(len(kinds), -1, dtype=np.int32)
        token_x = np.full(len(kinds), -1, dtype=np.int32)
        patch = np.flatnonzero(kinds == "patch")
        token_y[patch] = np.arange(len(patch)) // self.grid[1]
        token_x[patch] = np.arange(len(patch)) % self.grid[1]
        return token_y, token_x

    def attrs(self) -> dict[str, Any]:
        """The site's store-group attributes (the store format: one group per site)."""
        return {
            "module": self.module,
            "order": int(self.order),
            "grid_h": int(self.grid[0]),
            "grid_w": int(self.grid[1]),
            "num_heads": int(self.num_heads),
            "head_dim": int(self.head_dim),
            "scale": float(self.scale),
        }

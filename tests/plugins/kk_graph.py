"""A graph kind from outside the package: key-key cosine ("kk"), registered in this one file.

Importing this module registers it; ``KeyKeyCosine`` is also the value of an entry point
in ``tests/test_extension_points.py``.
"""

from __future__ import annotations

import torch

from interpret_spectral.spectral import GraphKind, register_graph_kind


class KeyKeyCosine(GraphKind):
    """``P = D^-1 max(k_n k_n^T, 0)``: tokens whose keys point the same way (diagonal 1)."""

    name = "kk"
    pathway = "where"
    variables = ("k",)

    def prepare(self, tokens, scale):
        return (torch.nn.functional.normalize(tokens["k"], dim=-1),)

    def affinity_rows(self, tensors, start, stop):
        (unit,) = tensors
        rows = (unit[..., start:stop, :] @ unit.transpose(-1, -2)).clamp_min(0.0)
        rows.diagonal(offset=start, dim1=-2, dim2=-1).fill_(1.0)
        return rows


KK = register_graph_kind(KeyKeyCosine())

"""Graph kinds: what an affinity graph over a site's patch tokens is, as one object each.

A :class:`GraphKind` says which store variables it reads, what it means (the
"where" or the "what" pathway), how it turns a site's tokens into rows of its
affinity ``A`` and its degree (so that ``P = D^-1 A``), and which unit features
the dataset-level decomposition links by top-k cosine similarity.  Everything
else (the operator ``M``, the solvers, :func:`~interpret_spectral.decompose`,
:func:`~interpret_spectral.decompose_dataset`, the CLI's ``--graph``) reads a kind
through this interface only.  Built-ins:

- ``"qk"``: ``P = softmax(q k^T * scale)``, the row softmax of the attention logits
  (computed stably), the "where" pathway;
- ``"vv"``: ``P = D^-1 A`` with ``A = max(v_n v_n^T, 0)``, the cosine similarity of the
  unit-normalised values with negatives set to zero (diagonal 1), the "what" pathway.

New kinds subclass :class:`GraphKind` and are registered with
:func:`register_graph_kind` or the entry-point group ``interpret_spectral.graph_kinds``.

Examples
--------
>>> {"qk", "vv"} <= set(available_graph_kinds())
True
>>> get_graph_kind("vv").variables, get_graph_kind("vv").pathway
(('v',), 'what')
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

from interpret_spectral.spectral.registry import Registry

__all__ = [
    "GraphKind",
    "QueryKeyGraph",
    "ValueCosineGraph",
    "ENTRY_POINT_GROUP",
    "register_graph_kind",
    "get_graph_kind",
    "available_graph_kinds",
    "qk_affinity",
    "vv_affinity",
]

ENTRY_POINT_GROUP = "interpret_spectral.graph_kinds"


class GraphKind(abc.ABC):
    """One kind of affinity graph over the patch tokens of an attention site.

    Attributes
    ----------
    name : str
        The registry name (``graph="..."``).
    pathway : str
        What the graph groups tokens by: ``"where"`` or ``"what"``.
    variables : tuple of str
        The store variables it reads (``("q", "k")``, ``("v",)``, ...).
    stochastic_rows : bool
        True when :meth:`affinity_rows` already returns rows of ``P`` (summing to one,
        e.g. a softmax); False when ``P = D^-1 A`` with ``D`` from :meth:`degree`.
    """

    name: str = ""
    pathway: str = ""
    variables: tuple[str, ...] = ()
    stochastic_rows: bool = False

    @abc.abstractmethod
    def prepare(self, tokens: Mapping[str, torch.Tensor], scale: float | None) -> tuple[torch.Tensor, ...]:
        """The tensors ``(graphs, n, c)`` the rows are computed from.

        ``tokens`` maps every name of :attr:`variables` to a ``(graphs, n, c)`` tensor
        (heads already stacked, or concatenated into one graph); ``scale`` is the site's
        softmax scale.
        """

    @abc.abstractmethod
    def affinity_rows(self, tensors: tuple[torch.Tensor, ...], start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of every graph's non-negative affinity: ``(..., stop - start, n)``."""

    def degree(self, tensors: tuple[torch.Tensor, ...], chunks: Iterable[tuple[int, int]]) -> torch.Tensor | None:
        """Row sums of the affinity ``(graphs, n)``, or None when rows are already stochastic."""
        if self.stochastic_rows:
            return None
        return torch.cat([self.affinity_rows(tensors, start, stop).sum(-1) for start, stop in chunks], dim=-1)

    def dataset_features(self, read: Callable[[str], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit ``(query, key)`` features ``(samples, tokens, width)`` for the dataset-level top-k graph.

        ``read(var)`` returns one store variable with the heads of a site concatenated.
        The default takes the first and the last of :attr:`variables`, unit-normalised
        (the same tensor twice for a kind that reads one variable).
        """
        units = {var: torch.nn.functional.normalize(read(var), dim=-1) for var in dict.fromkeys(self.variables)}
        return units[self.variables[0]], units[self.variables[-1]]

    def dense(self, scale: float | None = None, **tokens: Any) -> Any:
        """Dense ``P`` ``(..., n, n)`` from ``(..., n, d)`` tokens, of the input's type (a reference).

        Examples
        --------
        >>> import numpy as np
        >>> get_graph_kind("qk").dense(scale=10.0, q=np.eye(3), k=np.eye(3)).sum(-1).round(6).tolist()
        [1.0, 1.0, 1.0]
        """
        missing = [var for var in self.variables if var not in tokens]
        if missing:
            raise ValueError(f"the {self.name!r} graph needs {list(self.variables)}; missing {missing}")
        reference = tokens[self.variables[0]]
        tensors = {var: _float_tensor(tokens[var]) for var in self.variables}
        prepared = self.prepare(tensors, scale)
        n = prepared[0].shape[-2]
        rows = self.affinity_rows(prepared, 0, n)
        if not self.stochastic_rows:
            rows = rows / rows.sum(-1, keepdim=True)
        return rows if isinstance(reference, torch.Tensor) else rows.cpu().numpy()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, variables={self.variables!r}, pathway={self.pathway!r})"


def _float_tensor(x: Any) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def cosine_rows(unit: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of ``max(u u^T, 0)`` with diagonal 1, for unit rows ``u`` ``(..., n, c)``.

    Setting the diagonal (``cos(u, u) = 1``) also keeps a token with a zero vector a
    fixed point of the walk.

    Examples
    --------
    >>> import torch
    >>> cosine_rows(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), 0, 2).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    affinity = (unit[..., start:stop, :] @ unit.transpose(-1, -2)).clamp_min_(0.0)
    affinity.diagonal(offset=start, dim1=-2, dim2=-1).fill_(1.0)
    return affinity


class QueryKeyGraph(GraphKind):
    """``"qk"``: the attention itself, ``P = softmax(q k^T * scale)`` (the "where" pathway)."""

    name = "qk"
    pathway = "where"
    variables = ("q", "k")
    stochastic_rows = True

    def prepare(self, tokens: Mapping[str, torch.Tensor], scale: float | None) -> tuple[torch.Tensor, ...]:
        if scale is None:
            raise ValueError("the 'qk' graph needs the site's softmax scale")
        return tokens["q"] * float(scale), tokens["k"]

    def affinity_rows(self, tensors: tuple[torch.Tensor, ...], start: int, stop: int) -> torch.Tensor:
        q, k = tensors
        return torch.softmax(q[..., start:stop, :] @ k.transpose(-1, -2), dim=-1)


class ValueCosineGraph(GraphKind):
    """``"vv"``: cosine similarity of the values, negatives set to zero (the "what" pathway)."""

    name = "vv"
    pathway = "what"
    variables = ("v",)

    def prepare(self, tokens: Mapping[str, torch.Tensor], scale: float | None) -> tuple[torch.Tensor, ...]:
        return (torch.nn.functional.normalize(tokens["v"], dim=-1),)

    def affinity_rows(self, tensors: tuple[torch.Tensor, ...], start: int, stop: int) -> torch.Tensor:
        return cosine_rows(tensors[0], start, stop)


_REGISTRY: Registry[GraphKind] = Registry("graph kind", GraphKind, ENTRY_POINT_GROUP, "graph")
QK_GRAPH = _REGISTRY.register(QueryKeyGraph())
VV_GRAPH = _REGISTRY.register(ValueCosineGraph())


def register_graph_kind(kind: GraphKind | Callable[[], GraphKind], *, replace: bool = False) -> GraphKind:
    """Register a graph kind (an instance, its class or a factory) under its ``name``.

    Returns the registered instance.  A different kind under a taken name is refused
    unless ``replace=True``.

    Examples
    --------
    >>> class KeyCosine(ValueCosineGraph):
    ...     name, pathway, variables = "doc-kk", "where", ("k",)
    ...     def prepare(self, tokens, scale):
    ...         return (torch.nn.functional.normalize(tokens["k"], dim=-1),)
    >>> register_graph_kind(KeyCosine).name in available_graph_kinds()
    True
    """
    return _REGISTRY.register(kind, replace=replace)


def get_graph_kind(kind: str | GraphKind | Callable[[], GraphKind]) -> GraphKind:
    """The graph kind named ``kind``, or ``kind`` itself (an instance or a factory of one).

    Examples
    --------
    >>> get_graph_kind("qk").pathway
    'where'
    """
    return _REGISTRY.get(kind)


def available_graph_kinds() -> list[str]:
    """Names of every registered graph kind: built-ins, registered in code, entry points.

    Examples
    --------
    >>> {"qk", "vv"} <= set(available_graph_kinds())
    True
    """
    return _REGISTRY.available()


def qk_affinity(q: Any, k: Any, scale: float) -> Any:
    """Dense Q-K random-walk matrices ``P = softmax(q k^T * scale)`` (row softmax).

    Parameters
    ----------
    q, k : array-like or torch.Tensor
        ``(..., n, d)`` queries and keys (e.g. ``(head, token, channel)``).
    scale : float
        The softmax scale of the site.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``(..., n, n)`` row-stochastic matrices, of the type of ``q``.

    Examples
    --------
    >>> import numpy as np
    >>> p = qk_affinity(np.eye(3), np.eye(3), 10.0)
    >>> p.sum(-1).round(6).tolist()
    [1.0, 1.0, 1.0]
    """
    if np.shape(q) != np.shape(k):
        raise ValueError(f"q and k must have the same shape, got {tuple(np.shape(q))} and {tuple(np.shape(k))}")
    return QK_GRAPH.dense(scale=scale, q=q, k=_float_tensor(k).to(_float_tensor(q).dtype))


def vv_affinity(v: Any) -> Any:
    """Dense V-V random-walk matrices: cosine similarity, negatives set to 0, rows normalised.

    Parameters
    ----------
    v : array-like or torch.Tensor
        ``(..., n, d)`` values.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``(..., n, n)`` row-stochastic matrices, of the type of ``v``.

    Examples
    --------
    >>> import numpy as np
    >>> vv_affinity(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])).tolist()
    [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    """
    return VV_GRAPH.dense(v=v)

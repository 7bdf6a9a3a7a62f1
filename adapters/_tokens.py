"""Helpers the built-in adapters share: token layouts, capture checks, tap values, head splitting.

Every adapter that reads a plain sequence of tokens (``path``, ``torch-mha``,
``transformer-lens``) places them with :func:`token_layout`: leading special tokens
(class, register, ...), then the grid row-major.  The layout is never guessed: a
sequence whose grid cannot be told from its length alone is refused with a message
that names the option to set (``grid=`` or ``special_tokens=``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from interpret_spectral.capture.contract import AttentionSite, Tap, split_heads

__all__ = ["token_layout", "special_token_kinds", "check_capture", "single_value", "check_token_counts", "heads_first"]

#: What every built-in adapter can capture.
CAPTURABLE = ("q", "k", "v", "features")


def token_layout(
    num_tokens: int,
    grid: Sequence[int] | None = None,
    special_tokens: int | Sequence[str] | None = None,
) -> tuple[tuple[int, int], tuple[str, ...]]:
    """Token grid and token kinds of a sequence: leading special tokens, then the grid row-major.

    Parameters
    ----------
    num_tokens : int
        Length of the sequence.
    grid : (int, int), optional
        ``(grid_h, grid_w)``; ``(1, n)`` for text or any sequence without a 2-D layout.
        When not given, the grid tokens must be a square number (a square grid).
    special_tokens : int or sequence of str, optional
        Leading tokens that are not on the grid: a count (the first is ``"cls"``, the
        others ``"register"``) or their kinds (``"cls"``, ``"register"``,
        ``"distillation"``, ``"text"``, ``"other"``).  When not given, there are none
        if the tokens (or ``grid``) say so unambiguously; otherwise the layout is refused.

    Returns
    -------
    grid : (int, int)
    token_kinds : tuple of str
        ``"patch"`` for every grid cell.

    Raises
    ------
    ValueError
        When the layout cannot be told from the arguments; the message names the option to set.

    Examples
    --------
    >>> token_layout(5, special_tokens=1)
    ((2, 2), ('cls', 'patch', 'patch', 'patch', 'patch'))
    >>> token_layout(6, grid=(1, 6))[0]
    (1, 6)
    >>> token_layout(197)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: cannot tell the token layout of 197 tokens ...
    """
    num_tokens = int(num_tokens)
    if grid is not None:
        if len(grid) != 2 or not all(isinstance(g, (int, np.integer)) and not isinstance(g, bool) and g > 0 for g in grid):
            raise ValueError(f"grid must be a (height, width) pair of positive ints, got {grid!r}")
        shape = (int(grid[0]), int(grid[1]))
    if special_tokens is None:
        if grid is not None and shape[0] * shape[1] == num_tokens:
            special: tuple[str, ...] = ()
        elif grid is None and math.isqrt(num_tokens) ** 2 == num_tokens:
            special = ()
        else:
            raise ValueError(_ambiguous(num_tokens, grid))
    else:
        special = special_token_kinds(special_tokens)
    n_grid = num_tokens - len(special)
    if n_grid < 1:
        raise ValueError(f"{num_tokens} tokens leave no grid tokens after {len(special)} special tokens")
    if grid is None:
        side = math.isqrt(n_grid)
        if side * side != n_grid:
            raise ValueError(
                f"{n_grid} grid tokens ({num_tokens} tokens, {len(special)} special) are not a square grid; "
                f"pass grid=(height, width), e.g. grid=(1, {n_grid}) for a sequence"
            )
        shape = (side, side)
    elif shape[0] * shape[1] != n_grid:
        raise ValueError(
            f"grid {shape[0]}x{shape[1]} does not hold the {n_grid} grid tokens "
            f"({num_tokens} tokens, {len(special)} special); fix grid= or special_tokens="
        )
    return shape, special + ("patch",) * n_grid


def _ambiguous(num_tokens: int, grid: Sequence[int] | None) -> str:
    hints = []
    for count in (1, 2, 5):
        side = math.isqrt(max(num_tokens - count, 0))
        if count < num_tokens and side * side == num_tokens - count:
            hints.append(f"special_tokens={count} would make a {side}x{side} grid")
    given = "" if grid is None else f" and grid {tuple(grid)}"
    return (
        f"cannot tell the token layout of {num_tokens} tokens{given}: pass special_tokens= (the leading "
        "tokens that are not on the grid, e.g. 1 for a class token) and grid=(height, width) "
        f"(grid=(1, {num_tokens}) for a sequence)" + (f"; {', '.join(hints)}" if hints else "")
    )


def special_token_kinds(special_tokens: int | Sequence[str]) -> tuple[str, ...]:
    """Kinds of the leading non-grid tokens: a count (``"cls"``, then ``"register"``) or the kinds.

    Examples
    --------
    >>> special_token_kinds(3)
    ('cls', 'register', 'register')
    """
    if isinstance(special_tokens, (int, np.integer)) and not isinstance(special_tokens, bool):
        if special_tokens < 0:
            raise ValueError(f"special_tokens must be >= 0, got {special_tokens}")
        return tuple(["cls"] + ["register"] * (int(special_tokens) - 1)) if special_tokens else ()
    if isinstance(special_tokens, Sequence) and not isinstance(special_tokens, str):
        special = tuple(str(kind) for kind in special_tokens)
        if "patch" in special:
            raise ValueError("special_tokens names the non-grid tokens; 'patch' is the kind of grid tokens")
        return special
    raise TypeError(f"special_tokens must be an int or a sequence of token kinds, got {special_tokens!r}")


def check_capture(capture: Sequence[str], adapter: str) -> None:
    """Refuse a ``capture`` list naming anything but ``q``, ``k``, ``v`` and ``features``.

    Examples
    --------
    >>> check_capture(["q", "v"], "path")
    >>> check_capture(["attn"], "path")
    Traceback (most recent call last):
    ValueError: the path adapter captures q, k, v and features, not ['attn']
    """
    unknown = set(capture) - set(CAPTURABLE)
    if unknown:
        raise ValueError(f"the {adapter} adapter captures q, k, v and features, not {sorted(unknown)}")


def single_value(tapped: Mapping[str, list[torch.Tensor]], tap: Tap, adapter: str) -> torch.Tensor:
    """The one value a tap recorded in a forward pass; a clear error when it fired more often.

    Examples
    --------
    >>> single_value({"a:output": [torch.zeros(1)]}, Tap("a"), "path").shape
    torch.Size([1])
    """
    values = tapped.get(tap.key, [])
    if len(values) != 1:
        raise RuntimeError(
            f"module {tap.module!r} ran {len(values)} times in one forward pass; "
            f"the {adapter} adapter expects each attention module to run exactly once"
        )
    return values[0]


def check_token_counts(
    site: AttentionSite,
    values: Mapping[str, torch.Tensor],
    hint: str = "were the inputs of another size than the batch the sites were made from?",
) -> None:
    """Refuse assembled values whose token axis (``-2``) does not hold the site's tokens.

    Parameters
    ----------
    site : AttentionSite
    values : mapping of str to torch.Tensor
        What :meth:`~interpret_spectral.capture.contract.Adapter.assemble` returns.
    hint : str
        The likely cause, ending the message.

    Examples
    --------
    >>> site = AttentionSite("a", "a", 0, 1, 4, 0.5, (2, 2), ("cls",) + ("patch",) * 4)
    >>> check_token_counts(site, {"q": torch.zeros(1, 1, 5, 4)})
    >>> check_token_counts(site, {"q": torch.zeros(1, 1, 9, 4)})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    RuntimeError: site 'a': q has 9 tokens but the site expects 5 (2x2 patches and 1 special tokens); were ...
    """
    for name, value in values.items():
        tokens = int(value.shape[-2])
        if tokens != site.num_tokens:
            raise RuntimeError(
                f"site {site.name!r}: {name} has {tokens} tokens but the site expects {site.num_tokens} "
                f"({site.grid[0]}x{site.grid[1]} patches and {site.num_tokens - site.grid[0] * site.grid[1]} "
                f"special tokens); {hint}"
            )


def heads_first(value: torch.Tensor, num_heads: int, what: str) -> torch.Tensor:
    """``(B, N, H*D)`` -> ``(B, H, N, D)``; a ``(B, H, N, D)`` value is returned as it is.

    Examples
    --------
    >>> heads_first(torch.zeros(2, 5, 12), 3, "q").shape
    torch.Size([2, 3, 5, 4])
    """
    if value.ndim == 3:
        return split_heads(value, num_heads)
    if value.ndim == 4 and value.shape[1] == num_heads:
        return value
    raise ValueError(
        f"{what} has shape {tuple(value.shape)}; expected (batch, tokens, {num_heads} * head_dim) "
        f"or (batch, {num_heads}, tokens, head_dim)"
    )

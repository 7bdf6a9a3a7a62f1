"""Refusing impossible requests before allocating: memory estimates and grid limits.

Sizes read from a file or an argument (grids, head counts, sample counts) are checked
against the machine's available memory before any array is made from them, and a
request over it is refused with the estimate and what to change.

Examples
--------
>>> available_memory() > 0
True
>>> format_bytes(3 * 2**30)
'3.0 GiB'
"""

from __future__ import annotations

import os

__all__ = ["MAX_UPSAMPLING", "available_memory", "format_bytes", "check_memory", "check_upsampling"]

#: Largest factor per axis by which the output grid may exceed the finest chosen site's grid.
MAX_UPSAMPLING = 16


def available_memory() -> int:
    """Bytes of memory available now to a new allocation (2**63 - 1 where unknown).

    On Linux the kernel's ``MemAvailable`` (free memory plus the page cache and other
    memory it can reclaim); elsewhere the free pages of ``os.sysconf``.  Free pages
    alone are the wrong measure: after a few large files have been read, most of the
    memory is page cache, and the free pages fell to 275 MiB of 24 GiB here while
    23 GiB were available.

    Examples
    --------
    >>> isinstance(available_memory(), int)
    True
    """
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**63 - 1


def format_bytes(count: float) -> str:
    """``count`` bytes in binary units.

    Examples
    --------
    >>> format_bytes(1536)
    '1.5 KiB'
    """
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def check_memory(estimate: int, what: str, advice: str, available: int | None = None) -> None:
    """Raise :class:`MemoryError` when ``estimate`` bytes exceed the available memory.

    Examples
    --------
    >>> check_memory(10, "a tiny array", "nothing")
    >>> check_memory(2**70, "the result", "ask for less")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    MemoryError: the result would need about 1048576.0 PiB ...
    """
    limit = available_memory() if available is None else int(available)
    if estimate > limit:
        raise MemoryError(
            f"{what} would need about {format_bytes(estimate)}, more than the {format_bytes(limit)} of memory "
            f"available; {advice}"
        )


def check_upsampling(out_grid: tuple[int, int], finest: tuple[int, int], limit: int = MAX_UPSAMPLING) -> None:
    """Refuse an output grid more than ``limit`` times finer per axis than the finest chosen site.

    Such a grid carries no more detail than the sites hold and only multiplies the cost
    (a 1000 x 1000 grid over 4 x 4 sites is a 10^6-token eigenproblem).

    Examples
    --------
    >>> check_upsampling((64, 64), (8, 8))
    >>> check_upsampling((1000, 1000), (4, 4))  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: grid (1000, 1000) is 250x finer ...
    """
    factor = max(o / f for o, f in zip(out_grid, finest))
    if factor > limit:
        raise ValueError(
            f"grid {tuple(out_grid)} is {factor:.0f}x finer than the finest chosen site {tuple(finest)} "
            f"(at most {limit}x is accepted): the decomposition cannot hold more detail than the sites; pass "
            f"a grid of at most {tuple(limit * f for f in finest)} (the default is the finest site's grid) and "
            "upsample the result instead (interpret_spectral.upsample_labels)"
        )

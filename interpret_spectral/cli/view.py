"""``interpret-spectral view OUT_DIR``: an ``analyze`` run folder -> one self-contained HTML page."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from interpret_spectral.cli.common import UsageError, add_common, positive_int

__all__ = ["add_parser", "run"]

logger = logging.getLogger("interpret_spectral.cli")


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``view`` command.

    Examples
    --------
    >>> from interpret_spectral.cli.common import Parser
    >>> parser = Parser(prog="interpret-spectral")
    >>> _ = add_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["view", "out/demo", "--top-k", "8"])
    >>> args.command, args.run_folder, args.top_k
    ('view', 'out/demo', 8)
    """
    parser = subparsers.add_parser(
        "view", help="an analyze run folder -> one HTML page to explore it (viewer.html)",
        description="Write one HTML file (no server, works offline) showing per image: the image, the "
                    "eigenvectors as RGB with a component slider, the segments, the per-site contributions, "
                    "and, for a hovered patch, its strongest affinities in a chosen site and head.",
    )
    parser.add_argument("run_folder", metavar="OUT_DIR", help="the --out folder of `interpret-spectral analyze`")
    parser.add_argument("--out", "-o", default=None, help="the page to write (default OUT_DIR/viewer.html)")
    parser.add_argument("--samples", type=_names, default=None,
                        help="comma-separated sample ids to show (default all; each one adds to the file size)")
    parser.add_argument("--sites", type=_names, default=None,
                        help="comma-separated site names the hover can show (default all; fewer make a smaller file)")
    parser.add_argument("--top-k", type=positive_int, default=16,
                        help="strongest affinities kept per patch, site and head (default 16)")
    parser.add_argument("--max-side", type=positive_int, default=448,
                        help="longest side of the embedded images in pixels (default 448)")
    add_common(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the viewer page of ``args.run_folder``; returns the exit status."""
    from pathlib import Path

    from interpret_spectral.viewer import write_viewer

    folder = Path(args.run_folder).expanduser()
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; give the --out folder of `interpret-spectral analyze`")
    page = write_viewer(folder, args.out, samples=args.samples, sites=args.sites, top_k=args.top_k,
                        max_side=args.max_side, progress=not args.quiet)
    logger.info("wrote %s (%.1f MiB); open it in a browser, no server needed", page, page.stat().st_size / 2**20)
    return 0

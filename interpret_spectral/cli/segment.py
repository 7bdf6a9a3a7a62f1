"""``interpret-spectral segment``: eigenvectors -> segments (a netCDF labels file)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from interpret_spectral.cli.common import UsageError, add_common, add_k, parse_k_range, positive_int

__all__ = ["add_parser", "run"]

logger = logging.getLogger("interpret_spectral.cli")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``segment`` command."""
    parser = subparsers.add_parser(
        "segment", help="eigenvectors -> segments (netCDF)",
        description="K-Means on the eigenvector rows of every sample; K chosen per image unless --k.",
    )
    parser.add_argument("vectors", help="a vectors file written by decompose")
    parser.add_argument("--out", "-o", required=True, help="the labels file to write, e.g. labels_qk.nc")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--components", type=positive_int, default=None, help="cluster on the first N components (default all)")
    parser.add_argument("--seed", type=int, default=0, help="K-Means seed (default 0)")
    parser.add_argument("--crf", action="store_true", help="refine with a dense CRF on the images (needs --store)")
    parser.add_argument("--store", default=None, help="the store, to draw segments over its images (and for --crf)")
    parser.add_argument("--figures", default=None, help="folder for the figures (with --store)")
    add_k(parser)
    add_common(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Read the vectors file, segment sample by sample, write the labels (replace-on-success)."""
    from interpret_spectral import viz
    from interpret_spectral.pipeline import safe_name, segment_each
    from interpret_spectral.store.atomic import check_free
    from interpret_spectral.store.reader import open_store
    from interpret_spectral.store.results import open_decomposition, save_netcdf

    if args.crf and not args.store:
        raise UsageError("--crf refines on the images: give the store they are in with --store")
    k_range = parse_k_range(args.k_range)
    out = check_free(args.out, args.overwrite, what="labels file")
    decomposition = open_decomposition(args.vectors)
    store = open_store(Path(args.store).expanduser()) if args.store else None
    try:
        options: dict[str, Any] = {"k": args.k, "components": args.components, "seed": args.seed}
        if k_range is not None:
            options["k_range"] = k_range
        if args.k_method is not None:
            options["k_method"] = args.k_method
        started = time.perf_counter()
        labels = segment_each(decomposition, store, crf=args.crf, progress=not args.quiet, **options)
        save_netcdf(labels, out, overwrite=args.overwrite)
        ks = ", ".join(f"{s}: {int(k)}" for s, k in zip(labels["sample"].values[:8], labels["k"].values[:8]))
        logger.info(f"wrote {out}: segments per image {ks} in {time.perf_counter() - started:.1f} s")
        if store is not None:
            folder = Path(args.figures or Path(args.out).with_suffix("").as_posix() + "_figures")
            for i, sid in enumerate(str(s) for s in labels["sample"].values):
                viz.plot_segments(labels, viz.store_image(store, sid), sample=i,
                                  path=folder / f"{safe_name(sid)}_segments.png")
            logger.info(f"wrote {labels.sizes['sample']} figures in {folder}")
    finally:
        if store is not None:
            store.close()
    return 0

"""``interpret-spectral probe``: images -> activation store (one HDF5 file)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from interpret_spectral.cli.common import (
    UsageError,
    add_common,
    add_model,
    check_model_args,
    load,
    model_options,
    parse_layers,
    positive_int,
    probe_options,
)

__all__ = ["add_parser", "run"]

logger = logging.getLogger("interpret_spectral.cli")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``probe`` command."""
    parser = subparsers.add_parser(
        "probe", help="images -> activation store (HDF5)",
        description="Record the attention q/k/v of every site into a store (one HDF5 file).  With --overwrite "
                    "the new store is written beside the old one and replaces it only when complete.",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--out", "-o", required=True, help="the store file to write, e.g. store.h5")
    parser.add_argument("--capture", default="q,k,v", help="what to record: q,k,v (default) and optionally features")
    parser.add_argument("--store-dtype", default=None, choices=("float32", "float16"),
                        help="dtype the store records (default float32)")
    parser.add_argument("--limit", type=positive_int, default=None, help="use the first N images only")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store (once the new one is complete)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted store")
    add_model(parser)
    add_common(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Record the store; a new or overwriting store goes through a temporary file beside ``--out``."""
    from interpret_spectral.capture.engine import probe
    from interpret_spectral.models.loaders import model_label
    from interpret_spectral.pipeline import image_files
    from interpret_spectral.store.atomic import check_free
    from interpret_spectral.store.reader import sample_ids, site_names

    layers = parse_layers(args.layers)
    spec = check_model_args(args)
    files = image_files(args.inputs, args.limit)
    out = Path(args.out).expanduser()
    if args.overwrite and args.resume:
        raise UsageError("--overwrite and --resume exclude each other")
    if not args.resume:
        check_free(out, args.overwrite, what="store",
                   hint="pass --overwrite to replace it (once the new one is complete) or --resume to continue it")
    elif out.is_dir():
        raise IsADirectoryError(f"store {out} is a folder; give the .h5 file")
    capture = [c.strip() for c in args.capture.split(",") if c.strip()]
    model, spec = load(args)
    options: dict[str, Any] = dict(
        layers=layers, capture=capture, batch_size=args.batch_size, progress=not args.quiet,
        metadata={"model_name": model_label(spec)}, **model_options(args, spec.kind), **probe_options(args),
    )
    started = time.perf_counter()
    # resume continues in place (bit-exactly); overwrite writes beside and swaps in when complete
    store = probe(model, files, out=out, resume=args.resume and out.exists(), overwrite=args.overwrite, **options)
    store.close()
    from interpret_spectral.store.reader import open_store

    store = open_store(out)
    sites = site_names(store)
    logger.info(f"wrote {out}: {len(sample_ids(store))} samples x {len(sites)} sites "
                f"({sites[0]} .. {sites[-1]}) in {time.perf_counter() - started:.1f} s")
    store.close()
    return 0

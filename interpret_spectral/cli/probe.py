"""``interpret-spectral probe``: images -> activation store (one HDF5 file, or a sharded store with --workers)."""

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
        description="Record the attention q/k/v of every site into a store (one HDF5 file; with --workers or "
                    "--scheduler a sharded store: a folder of shard files that open_store opens as one).  With "
                    "--overwrite the new store is written beside the old one and replaces it only when complete.",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--out", "-o", required=True,
                        help="the store file to write, e.g. store.h5 (with --workers/--scheduler: a folder)")
    parser.add_argument("--capture", default="q,k,v", help="what to record: q,k,v (default) and optionally features")
    parser.add_argument("--store-dtype", default=None, choices=("float32", "float16"),
                        help="dtype the store records (default float32)")
    parser.add_argument("--limit", type=positive_int, default=None, help="use the first N images only")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store (once the new one is complete)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted store")
    scale = parser.add_argument_group("scale (the Dask runner, docs/scaling.md)")
    scale.add_argument("--workers", type=positive_int, default=None,
                       help="probe shards of images on a local Dask cluster of N worker processes (--out: a folder)")
    scale.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="probe shards of images on the Dask cluster at ADDRESS (e.g. tcp://host:8786)")
    scale.add_argument("--shard-size", type=positive_int, default=None,
                       help="images per task and shard file (default 8; with --workers or --scheduler)")
    scale.add_argument("--shard-format", default=None, choices=("h5", "zarr"),
                       help="shards as HDF5 files (default) or zarr v3 stores (with --workers or --scheduler)")
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
    capture = [c.strip() for c in args.capture.split(",") if c.strip()]
    if args.workers is not None or args.scheduler is not None:
        return _run_distributed(args, files, layers, capture, spec)
    if args.shard_size is not None or args.shard_format is not None:
        raise UsageError("--shard-size and --shard-format apply with --workers N or --scheduler ADDRESS "
                         "(a sharded store); one store is zarr when --out ends in .zarr")
    if not args.resume:
        check_free(out, args.overwrite, what="store",
                   hint="pass --overwrite to replace it (once the new one is complete) or --resume to continue it")
    elif out.is_dir():
        raise IsADirectoryError(f"store {out} is a folder; give the .h5 file")
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


def _run_distributed(args: argparse.Namespace, files: list[Path], layers: Any, capture: list[str], spec: Any) -> int:
    """``--workers`` / ``--scheduler``: :func:`interpret_spectral.runner.run_probe` into a sharded store."""
    from interpret_spectral.models.loaders import model_label
    from interpret_spectral.runner import run_probe

    if args.workers is not None and args.scheduler is not None:
        raise UsageError("give --workers N (a local cluster) or --scheduler ADDRESS, not both")
    summary = run_probe(
        files, args.out, model=str(args.model), weights=args.weights, workers=args.workers, scheduler=args.scheduler,
        shard_size=args.shard_size or 8, shard_format=args.shard_format or "h5", layers=layers, capture=capture,
        batch_size=args.batch_size,
        probe_options=model_options(args, spec.kind), model_name=model_label(spec), resume=args.resume,
        overwrite=args.overwrite, progress=not args.quiet, **probe_options(args),
    )
    logger.info(f"wrote the sharded store {summary['store']}: {len(summary['samples'])} samples in "
                f"{summary['shards']} shard(s) ({summary['shards_run']} run now) in {summary['wall_seconds']:.1f} s "
                f"after {summary['setup_seconds']:.1f} s of setup")
    return 0

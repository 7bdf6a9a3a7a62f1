"""``interpret-spectral decompose``: store -> eigenvectors (a netCDF vectors file)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from interpret_spectral.cli.common import (
    UsageError,
    add_common,
    add_spectral,
    check_solver,
    parse_graphs,
    parse_ints,
    parse_layers,
    positive_int,
)

__all__ = ["add_parser", "run"]

logger = logging.getLogger("interpret_spectral.cli")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``decompose`` command."""
    parser = subparsers.add_parser(
        "decompose", help="store -> eigenvectors (netCDF)",
        description="Layer-distributed spectral decomposition of every sample of a store.  With --workers or "
                    "--scheduler the samples are decomposed on a Dask cluster, a block per task, and joined "
                    "into the same --out file.",
    )
    parser.add_argument("store", help="a store written by probe (a .h5 file or a sharded store's folder)")
    parser.add_argument("--out", "-o", required=True, help="the vectors file to write, e.g. vectors_qk.nc")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--layers", default=None, help="sites to use: indices, names or glob patterns; default all")
    parser.add_argument("--heads", default="each", choices=("each", "concat"),
                        help="one graph per head (default) or heads concatenated")
    parser.add_argument("--timesteps", default=None, help="timestep positions to use (stores with timesteps)")
    parser.add_argument("--resample", default="bilinear", choices=("bilinear", "area"),
                        help="grid resampling (default bilinear)")
    parser.add_argument("--grid", type=positive_int, default=None, help="output grid side (default: the finest site grid)")
    parser.add_argument("--device", default=None, help="where the decomposition runs: cpu, cuda, ... (default cpu)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="decompose a store whose probe stopped early (default: refused, saying how to resume)")
    parser.add_argument("--figures", default=None, help="also draw eigenvector/segment figures into this folder")
    scale = parser.add_argument_group("scale (the Dask runner, docs/scaling.md)")
    scale.add_argument("--workers", type=positive_int, default=None,
                       help="decompose blocks of samples on a local Dask cluster of N worker processes")
    scale.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="decompose blocks of samples on the Dask cluster at ADDRESS (e.g. tcp://host:8786)")
    scale.add_argument("--shard-size", type=positive_int, default=None,
                       help="samples per task (default 8; with --workers or --scheduler)")
    scale.add_argument("--resume", action="store_true",
                       help="continue an interrupted run (its parts in OUT.parts); with --workers or --scheduler")
    add_spectral(parser, multi_graph=False)
    add_common(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Refuse an existing ``--out`` before computing; decompose; write the file (replace-on-success)."""
    from interpret_spectral.spectral.decompose import decompose
    from interpret_spectral.store.atomic import check_free
    from interpret_spectral.store.reader import open_store
    from interpret_spectral.store.results import save_netcdf

    (graph,) = parse_graphs(args.graph, multi=False)
    check_solver(args.solver)
    layers = parse_layers(args.layers)
    timesteps = parse_ints(args.timesteps, "--timesteps")
    distributed = args.workers is not None or args.scheduler is not None
    if args.workers is not None and args.scheduler is not None:
        raise UsageError("give --workers N (a local cluster) or --scheduler ADDRESS, not both")
    if not distributed and (args.resume or args.shard_size is not None):
        raise UsageError("--resume and --shard-size apply with --workers N or --scheduler ADDRESS")
    if args.resume and args.overwrite:
        raise UsageError("--overwrite and --resume exclude each other")
    options: dict[str, Any] = {
        "n_components": args.n_components, "solver": args.solver, "layers": layers, "heads": args.heads,
        "resample": args.resample, "seed": args.seed, "progress": not args.quiet,
        "allow_incomplete": args.allow_incomplete,
    }
    if timesteps is not None:
        options["timesteps"] = timesteps
    if args.grid is not None:
        options["grid"] = args.grid
    if args.device is not None:
        options["device"] = args.device
    source = Path(args.store).expanduser()
    started = time.perf_counter()
    if distributed:
        from interpret_spectral.runner import run_decompose

        out = Path(args.out).expanduser()
        decomposition = run_decompose(source, out, graph=graph, workers=args.workers, scheduler=args.scheduler,
                                      shard_size=args.shard_size or 8, resume=args.resume, overwrite=args.overwrite,
                                      **options)
        _wrote(out, graph, decomposition, started)
        if args.figures:
            store = open_store(source)
            try:
                _figures(args, graph, decomposition, store)
            finally:
                store.close()
        return 0
    out = check_free(args.out, args.overwrite, what="vectors file")
    store = open_store(source)
    try:
        decomposition = decompose(store, graph=graph, **options)
        save_netcdf(decomposition, out, overwrite=args.overwrite)
        _wrote(out, graph, decomposition, started)
        if args.figures:
            _figures(args, graph, decomposition, store)
    finally:
        store.close()
    return 0


def _wrote(out: Path, graph: str, decomposition: Any, started: float) -> None:
    logger.info(f"wrote {out}: {graph.upper()} vectors {dict(decomposition['vectors'].sizes)} "
                f"in {time.perf_counter() - started:.1f} s")


def _figures(args: argparse.Namespace, graph: str, decomposition: Any, store: Any) -> None:
    """``--figures``: segment every sample and draw the eigenvector/segment figures."""
    from interpret_spectral.pipeline import AnalyzeSettings, GraphResult, draw_figures, segment_each
    from interpret_spectral.spectral.decompose import site_contributions

    settings = AnalyzeSettings(graphs=(graph,), n_components=args.n_components, seed=args.seed, device=args.device)
    labels = segment_each(decomposition, store, progress=not args.quiet, desc=f"segment {graph}",
                          **settings.segment_options())
    contributions = site_contributions(store, decomposition, device=args.device)["contribution"]
    result = GraphResult(settings.kinds[0], decomposition, labels, contributions)
    written = draw_figures(store, result, args.figures, 1, not args.quiet)
    logger.info(f"wrote {len(written)} figures in {args.figures}")

"""``interpret-spectral decompose``: store -> eigenvectors (a netCDF vectors file)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from interpret_spectral.cli.common import (
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
        description="Layer-distributed spectral decomposition of every sample of a store.",
    )
    parser.add_argument("store", help="a store written by probe")
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
    add_spectral(parser, multi_graph=False)
    add_common(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Refuse an existing ``--out`` before computing; decompose; write the file (replace-on-success)."""
    from interpret_spectral.pipeline import AnalyzeSettings, GraphResult, draw_figures, segment_each
    from interpret_spectral.spectral.decompose import decompose, site_contributions
    from interpret_spectral.store.atomic import check_free
    from interpret_spectral.store.reader import open_store
    from interpret_spectral.store.results import save_netcdf

    (graph,) = parse_graphs(args.graph, multi=False)
    check_solver(args.solver)
    layers = parse_layers(args.layers)
    timesteps = parse_ints(args.timesteps, "--timesteps")
    out = check_free(args.out, args.overwrite, what="vectors file")
    store = open_store(Path(args.store).expanduser())
    try:
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
        started = time.perf_counter()
        decomposition = decompose(store, graph=graph, **options)
        save_netcdf(decomposition, out, overwrite=args.overwrite)
        logger.info(f"wrote {out}: {graph.upper()} vectors {dict(decomposition['vectors'].sizes)} "
                    f"in {time.perf_counter() - started:.1f} s")
        if args.figures:
            settings = AnalyzeSettings(graphs=(graph,), n_components=args.n_components, seed=args.seed,
                                       device=args.device)
            labels = segment_each(decomposition, store, progress=not args.quiet, desc=f"segment {graph}",
                                  **settings.segment_options())
            contributions = site_contributions(store, decomposition, device=args.device)["contribution"]
            result = GraphResult(settings.kinds[0], decomposition, labels, contributions)
            written = draw_figures(store, result, args.figures, 1, not args.quiet)
            logger.info(f"wrote {len(written)} figures in {args.figures}")
    finally:
        store.close()
    return 0

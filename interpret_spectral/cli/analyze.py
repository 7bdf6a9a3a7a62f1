"""``interpret-spectral analyze``: the whole job (images -> store -> eigenvectors -> segments -> figures)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from interpret_spectral.cli.common import (
    UsageError,
    add_common,
    add_k,
    add_model,
    add_spectral,
    check_model_args,
    check_solver,
    load,
    model_options,
    parse_graphs,
    parse_k_range,
    parse_layers,
    positive_int,
    probe_options,
)

__all__ = ["add_parser", "run", "print_summary"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``analyze`` command."""
    parser = subparsers.add_parser(
        "analyze", help="images -> store -> eigenvectors -> segments -> figures + summary.json",
        description="Run the whole job on images or folders of images: probe the model, decompose the graphs "
                    "(QK 'where' and VV 'what' by default), segment every image, draw figures and write "
                    "summary.json.  An earlier run in --out is replaced only once the new one is complete.",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--out", "-o", default="out/analyze", help="output folder (default out/analyze)")
    parser.add_argument("--heads", default="each", choices=("each", "concat"),
                        help="one graph per head (default) or heads concatenated")
    parser.add_argument("--crf", action="store_true", help="refine the segments with a dense CRF on each image")
    parser.add_argument("--store-dtype", default=None, choices=("float32", "float16"),
                        help="dtype the store records (default float32)")
    parser.add_argument("--limit", type=positive_int, default=None, help="use the first N images only")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run in --out (kept until the new run is complete)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted (or earlier) run's store")
    add_model(parser)
    add_spectral(parser, multi_graph=True)
    add_k(parser)
    add_common(parser)
    return parser


def print_summary(summary: dict[str, Any], out: Path) -> None:
    """The status lines of a finished run (logged: on stdout unless -q)."""
    import logging

    log = logging.getLogger("interpret_spectral.cli")
    log.info(f"{len(summary['samples'])} image(s), {summary['sites']} sites x {summary['heads_per_site']} heads, "
             f"grids {', '.join(summary['grids'])}")
    for graph, entry in summary["graphs"].items():
        ks = ", ".join(f"{sid}: {k}" for sid, k in list(entry["k"].items())[:6])
        top = entry["sites_most_in_agreement"][0]["site"] if entry["sites_most_in_agreement"] else "-"
        meaning = f" ('{entry['meaning']}')" if entry.get("meaning") else ""
        log.info(f"{graph.upper()}{meaning}: segments per image {ks}; site most in agreement {top}")
    log.info(f"wrote {out / 'summary.json'}, {out / 'store.h5'}, vectors_*.nc, labels_*.nc and "
             f"{len(summary['figures'])} figures in {out / 'figures'}")


def run(args: argparse.Namespace) -> int:
    """Check every argument, load the model, run :func:`interpret_spectral.pipeline.analyze`."""
    from interpret_spectral.models.loaders import model_label
    from interpret_spectral.pipeline import analyze, check_run_folder, image_files

    graphs = parse_graphs(args.graph)
    check_solver(args.solver)
    layers = parse_layers(args.layers)
    k_range = parse_k_range(args.k_range)
    spec = check_model_args(args)
    files = image_files(args.inputs, args.limit)
    try:
        check_run_folder(args.out, args.overwrite, args.resume)
    except ValueError as error:
        raise UsageError(str(error)) from error
    model, spec = load(args)
    summary = analyze(
        model, files, args.out, graphs=graphs, n_components=args.n_components, solver=args.solver,
        k=args.k, k_range=k_range, k_method=args.k_method, crf=args.crf, layers=layers, heads=args.heads,
        batch_size=args.batch_size, seed=args.seed, figures=not args.no_figures, overwrite=args.overwrite,
        resume=args.resume, progress=not args.quiet, model_name=model_label(spec),
        probe_options=model_options(args, spec.kind), **probe_options(args),
    )
    print_summary(summary, Path(args.out))
    return 0

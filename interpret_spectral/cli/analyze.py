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
    scale = parser.add_argument_group("scale (the Dask runner, docs/scaling.md)")
    scale.add_argument("--workers", type=positive_int, default=None,
                       help="run shards of images on a local Dask cluster of N worker processes")
    scale.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run shards on the Dask cluster at ADDRESS (e.g. tcp://host:8786)")
    scale.add_argument("--shard-size", type=positive_int, default=8, help="images per task and shard (default 8)")
    scale.add_argument("--shard-format", default="h5", choices=("h5", "zarr"),
                       help="with --keep store: shards as HDF5 files (default) or zarr v3 stores")
    scale.add_argument("--keep", default="store", choices=("store", "vectors"),
                       help="store: write q/k/v (a sharded store with --workers/--scheduler); vectors: keep only "
                            "eigenvectors, eigenvalues, labels and contributions (needs --workers or --scheduler)")
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
    if args.workers is not None or args.scheduler is not None or args.keep == "vectors":
        return _run_distributed(args, files, graphs, layers, k_range, spec)
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


def _run_distributed(args: argparse.Namespace, files: list[Path], graphs: list[str], layers: Any,
                     k_range: Any, spec: Any) -> int:
    """``--workers`` / ``--scheduler``: :func:`interpret_spectral.runner.run_analyze` (no figures)."""
    import logging

    from interpret_spectral.models.loaders import model_label
    from interpret_spectral.runner import run_analyze

    if args.workers is not None and args.scheduler is not None:
        raise UsageError("give --workers N (a local cluster) or --scheduler ADDRESS, not both")
    if args.workers is None and args.scheduler is None:
        raise UsageError("--keep vectors runs on the Dask runner: add --workers N or --scheduler ADDRESS")
    if args.crf:
        raise UsageError("--crf is not available with --workers/--scheduler")
    options = model_options(args, spec.kind)
    summary = run_analyze(
        files, args.out, model=str(args.model), weights=args.weights, workers=args.workers, scheduler=args.scheduler,
        shard_size=args.shard_size, keep=args.keep, shard_format=args.shard_format, graphs=graphs,
        n_components=args.n_components,
        solver=args.solver, k=args.k, k_range=k_range, k_method=args.k_method, heads=args.heads, layers=layers,
        seed=args.seed, batch_size=args.batch_size, probe_options=options, model_name=model_label(spec),
        resume=args.resume, overwrite=args.overwrite, progress=not args.quiet, **probe_options(args),
    )
    out = Path(args.out)
    logging.getLogger("interpret_spectral.cli").info(
        f"{len(summary['samples'])} image(s) in {summary['shards']} shard(s), {summary['images_per_second']} images/s; "
        f"wrote {out / 'summary.json'}, vectors_*.nc, labels_*.nc, contributions_*.nc"
        + (f" and the sharded store {out / 'store'}" if summary["store"] else " (keep=vectors: no q/k/v written)")
    )
    return 0

"""``run_decompose``: the per-sample ``decompose`` of a store's samples, spread over a Dask cluster.

A task is a block of samples of one store file (a single-file store, or one shard of a
sharded store): the worker opens that file itself by path (no arrays are shipped),
runs :func:`~interpret_spectral.spectral.decompose.decompose` on the block
(``samples=``) and writes its part, ``<out>.parts/part-00000.nc``, through a temporary
file renamed in when complete.  The parts are then joined, in the store's sample order,
into the file the single-process ``decompose --out`` writes, and the parts folder is
removed.  ``resume=True`` redoes only the parts that are missing.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interpret_spectral.runner._cluster import (
    WorkerSetupError,
    check_connection,
    cluster,
    limit_threads,
    logger,
    run_tasks,
)
from interpret_spectral.store.atomic import check_free, remove_path, replacing_file
from interpret_spectral.store.format import StoreError
from interpret_spectral.store.shards import (
    read_manifest,
    shard_complete,
    store_fingerprint,
)

__all__ = ["DecomposeJob", "run_decompose", "parts_folder"]

_PLAN = "plan.json"


@dataclass(frozen=True)
class DecomposeJob:
    """One decompose task: a block of samples of one store file and the part file it writes (picklable)."""

    index: int
    source: str
    ids: list[str]
    part: str
    graph: Any
    options: dict[str, Any] = field(default_factory=dict)
    torch_threads: int = 1


def parts_folder(out: str | os.PathLike[str]) -> Path:
    """Where :func:`run_decompose` keeps the parts of ``out`` until they are joined.

    Examples
    --------
    >>> parts_folder("out/vectors_qk.nc").as_posix()
    'out/vectors_qk.nc.parts'
    """
    out = Path(out)
    return out.with_name(f"{out.name}.parts")


def _part_path(parts: Path, index: int) -> Path:
    return parts / f"part-{index:05d}.nc"


def _decompose_part(job: DecomposeJob) -> dict[str, Any]:
    """The task (on a worker): open the store file, decompose the block, write the part."""
    from interpret_spectral.spectral.decompose import decompose
    from interpret_spectral.store.reader import open_store
    from interpret_spectral.store.results import save_netcdf

    started = time.perf_counter()
    limit_threads(job.torch_threads)
    store = open_store(job.source)
    try:
        result = decompose(store, graph=job.graph, samples=list(job.ids), progress=False, **job.options)
    finally:
        store.close()
    save_netcdf(result, job.part)
    return {"index": job.index, "samples": list(job.ids), "pid": os.getpid(),
            "seconds": round(time.perf_counter() - started, 3)}


def _store_files(store: Path, allow_incomplete: bool) -> list[tuple[Path, list[str]]]:
    """(file, its sample ids) of every store file to decompose, checked on the client."""
    from interpret_spectral.store.selection import as_store

    if store.is_dir():
        manifest = read_manifest(store)  # a folder without a manifest is refused here, in one line
        ready = [entry for entry in manifest["shards"] if shard_complete(store, entry)]
        if not ready:
            raise StoreError(f"no shard of the sharded store {store} is complete yet; run (or resume) the probe "
                             "that writes it")
        if len(ready) < len(manifest["shards"]) and not allow_incomplete:
            done = sum(len(entry["samples"]) for entry in ready)
            raise StoreError(
                f"{store} holds {done} of {manifest['samples']} samples ({len(ready)} of {len(manifest['shards'])} "
                "shards complete); resume the probe that writes it (run_probe(..., resume=True), --resume) or pass "
                "allow_incomplete=True (--allow-incomplete) to decompose the complete shards"
            )
        first = store_fingerprint(store / ready[0]["name"])
        for entry in ready[1:]:
            if store_fingerprint(store / entry["name"]) != first:
                raise StoreError(
                    f"shard {store / entry['name']} does not belong to the store in {store}: its model, input size "
                    f"or site layout differs from {ready[0]['name']}'s; remove it and rerun its samples"
                )
        return [(store / entry["name"], [str(s) for s in entry["samples"]]) for entry in ready]
    from interpret_spectral.store.reader import sample_ids

    tree = as_store(store, allow_incomplete)
    try:
        return [(store, sample_ids(tree))]
    finally:
        tree.close()


def _part_done(path: Path, ids: list[str]) -> bool:
    """Whether a part file is complete: it opens as a decomposition of exactly these samples."""
    from interpret_spectral.store.results import ResultFileError, open_decomposition

    if not path.is_file():
        return False
    try:
        return [str(s) for s in open_decomposition(path)["sample"].values] == ids
    except (ResultFileError, OSError, ValueError):
        return False


def _check_workers_see(client: Any, store: Path) -> None:
    """Every worker must reach the store by the same path (a shared file system)."""
    seen = client.run(os.path.exists, str(store))
    blind = sorted(address for address, found in seen.items() if not found)
    if blind:
        raise WorkerSetupError(
            f"Dask worker(s) {', '.join(blind[:3])} cannot see the store {store}; give a path every worker reads "
            "(a shared file system)"
        )


def _join(paths: list[Path]) -> Any:
    """One decomposition from the parts, in order: what ``decompose`` of every sample returns."""
    import xarray as xr

    from interpret_spectral.store.decomposition import validate_decomposition
    from interpret_spectral.store.results import open_decomposition

    parts = [open_decomposition(path) for path in paths]
    joined = xr.concat(parts, dim="sample", data_vars="minimal", coords="minimal", compat="override",
                       combine_attrs="override")
    methods = {m for part in parts for m in str(part.attrs.get("method", "")).split(",") if m}
    joined.attrs["method"] = ",".join(sorted(methods))
    validate_decomposition(joined, source="the joined parts")
    return joined


def run_decompose(
    store: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    graph: Any = "qk",
    n_components: int = 10,
    solver: Any = "exact",
    layers: Any = None,
    heads: str = "each",
    timesteps: Any = None,
    resample: str = "bilinear",
    grid: Any = None,
    seed: int = 0,
    device: str | None = None,
    weights: Any = None,
    allow_incomplete: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    shard_size: int = 8,
    resume: bool = False,
    overwrite: bool = False,
    retries: int = 2,
    progress: bool = True,
    connect_timeout: float = 10.0,
    **solver_options: Any,
) -> Any:
    """Decompose every sample of a store on a Dask cluster and write the vectors file ``out``.

    The result equals :func:`~interpret_spectral.spectral.decompose.decompose` of the
    whole store in one process (the same per-sample computation), and ``out`` is the file
    ``interpret-spectral decompose --out`` writes (:func:`~interpret_spectral.store.results.save_netcdf`).

    Parameters
    ----------
    store : path-like
        A store file or a sharded store's folder, at a path every worker reads.
    out : path-like
        The vectors file to write (``.nc``).
    graph, n_components, solver, layers, heads, timesteps, resample, grid, seed, device, weights
        As :func:`~interpret_spectral.spectral.decompose.decompose`.
    allow_incomplete : bool
        Decompose the samples a store holds when its probe stopped early (a sharded
        store: its complete shards).
    workers : int, optional
        Start a ``LocalCluster`` with this many worker processes (one thread each).
    scheduler : str, optional
        Address of a running Dask scheduler to join (``tcp://host:8786``).
    client : distributed.Client, optional
        A client you hold (not closed here).
    shard_size : int
        Samples per task (a task never spans two shards of a sharded store).
    resume : bool
        Continue an interrupted run: only the parts missing from ``<out>.parts`` are run.
    overwrite : bool
        Replace an existing ``out`` (once the new one is complete).
    retries : int
        Times a task that raised is retried (a dead worker's task is always rerun).
    progress : bool
        A progress bar over tasks.
    connect_timeout : float
        Seconds to wait for ``scheduler``.
    **solver_options
        Options of the solver, as :func:`~interpret_spectral.spectral.decompose.decompose`.

    Returns
    -------
    xarray.Dataset
        The decomposition, in the one decomposition format (as written to ``out``).

    Raises
    ------
    SchedulerUnreachableError
        ``scheduler`` does not answer.
    WorkerSetupError
        A worker cannot see the store.
    FileExistsError
        ``out`` exists (without ``overwrite``), or the parts of an interrupted run are in
        ``<out>.parts`` (without ``resume`` or ``overwrite``).
    StoreError
        An incomplete store (without ``allow_incomplete``), a folder that is not a sharded
        store, a shard of another model or layout.

    Examples
    --------
    >>> result = run_decompose("out/store", "out/vectors_qk.nc", graph="qk", workers=2)  # doctest: +SKIP
    >>> result["vectors"].dims  # doctest: +SKIP
    ('sample', 'y', 'x', 'component')
    """
    if resume and overwrite:
        raise ValueError("overwrite and resume exclude each other")
    if isinstance(shard_size, bool) or int(shard_size) < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    check_connection(workers, scheduler, client)
    store = Path(store).expanduser().absolute()
    out = Path(out).expanduser()
    parts = parts_folder(out)
    if resume and out.exists() and not parts.exists():
        raise FileExistsError(f"{out} exists and no interrupted run is in {parts}; pass overwrite=True (--overwrite) "
                              "to decompose again")
    if not resume:
        check_free(out, overwrite, what="vectors file",
                   hint="pass --overwrite (overwrite=True) to replace it once the new one is complete")
    options: dict[str, Any] = {"n_components": n_components, "solver": solver, "layers": layers, "heads": heads,
                               "timesteps": timesteps, "resample": resample, "grid": grid, "seed": seed,
                               "device": device, "weights": weights, "allow_incomplete": allow_incomplete,
                               **solver_options}
    size = int(shard_size)
    blocks = [(path, ids[i:i + size]) for path, ids in _store_files(store, allow_incomplete)
              for i in range(0, len(ids), size)]
    plan = {"store": str(store), "blocks": [[str(path), ids] for path, ids in blocks],
            "graph": str(getattr(graph, "name", graph)),
            "options": json.loads(json.dumps(options, default=lambda v: getattr(v, "name", str(v))))}
    if parts.exists():
        if overwrite:
            remove_path(parts)
        elif not resume:
            raise FileExistsError(f"{parts} holds the parts of an interrupted decomposition of {out}; pass resume=True "
                                  "(--resume) to continue it or overwrite=True (--overwrite) to start again")
        elif not (parts / _PLAN).is_file() or json.loads((parts / _PLAN).read_text()) != plan:
            raise ValueError(f"{parts} holds the parts of another decomposition (other store, samples, shard size or "
                             "options); resume with the same arguments, or pass overwrite=True (--overwrite)")
    setup = time.perf_counter()
    with cluster(workers, scheduler, client, connect_timeout) as client_:
        _check_workers_see(client_, store)
        setup = time.perf_counter() - setup
        started = time.perf_counter()
        parts.mkdir(parents=True, exist_ok=True)
        with replacing_file(parts / _PLAN) as tmp:
            tmp.write_text(json.dumps(plan, indent=1) + "\n")
        jobs = [DecomposeJob(index=i, source=str(path), ids=ids, part=str(_part_path(parts, i)), graph=graph,
                             options=options)
                for i, (path, ids) in enumerate(blocks) if not _part_done(_part_path(parts, i), ids)]
        logger.info("%d task(s) of %d sample(s) to decompose, %d part(s) already complete", len(jobs),
                    sum(len(ids) for _, ids in blocks), len(blocks) - len(jobs))
        run_tasks(client_, _decompose_part, jobs, retries, progress, unit="part")
    paths = [_part_path(parts, i) for i in range(len(blocks))]
    missing = [i for i, (path, (_, ids)) in enumerate(zip(paths, blocks)) if not _part_done(path, ids)]
    if missing:
        raise RuntimeError(f"parts {missing[:5]} of {out} are not complete after the run; rerun with resume=True")
    joined = _join(paths)
    from interpret_spectral.store.results import save_netcdf

    save_netcdf(joined, out, overwrite=True)
    remove_path(parts)  # the parts, and what a killed worker left beside them
    logger.info("decomposed %d sample(s) in %d part(s) in %.1f s (setup %.1f s)", joined.sizes["sample"],
                len(blocks), time.perf_counter() - started, setup)
    return joined

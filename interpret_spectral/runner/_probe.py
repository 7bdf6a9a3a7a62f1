"""``run_probe``: images -> a sharded store, one shard of images per Dask task.

The plan (the manifest of :func:`~interpret_spectral.store.shards.create_sharded_store`)
is written first; each task probes its images into ``shard_path(out, i)`` through a
temporary file renamed in only when complete; the store is sealed at the end.  A
worker killed mid-shard leaves no shard that looks complete, Dask reruns the task
elsewhere, and ``resume=True`` redoes only the shards that are missing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interpret_spectral.runner._cluster import (
    check_connection,
    check_model,
    cluster,
    image_plan,
    load_worker_model,
    logger,
    model_key,
    model_label,
    probe_files,
    probe_settings,
    run_tasks,
    warm_workers,
)
from interpret_spectral.store.atomic import partial_name, remove_path, replace_dir, replacing_file
from interpret_spectral.store.shards import (
    check_shard_format,
    create_sharded_store,
    is_sharded_store,
    missing_shards,
    read_manifest,
    remove_stale_partials,
    seal_sharded_store,
    shard_path,
)

__all__ = ["ProbeJob", "run_probe"]


@dataclass(frozen=True)
class ProbeJob:
    """One probe task: the images of a shard and the sharded store they go to (picklable)."""

    index: int
    files: list[str]
    ids: list[str]
    store: str
    model: Any
    model_key: str
    weights: str | None
    device: str | None = None
    probe_options: dict[str, Any] = field(default_factory=dict)
    model_name: str | None = None
    layers: Any = None
    batch_size: int = 4
    torch_threads: int = 1


def _probe_shard(job: ProbeJob) -> dict[str, Any]:
    """The task (on a worker): probe the shard's images into its shard file, renamed in when complete."""
    started = time.perf_counter()
    model = load_worker_model(job.model, job.model_key, job.weights, job.device, job.torch_threads)
    with replacing_file(shard_path(job.store, job.index)) as tmp:
        probe_files(model, job.files, job.ids, out=tmp, layers=job.layers, batch_size=job.batch_size,
                    model_name=job.model_name, options=job.probe_options).close()
    return {"index": job.index, "samples": list(job.ids), "pid": os.getpid(),
            "seconds": round(time.perf_counter() - started, 3)}


def _check_target(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an ``out`` that is a file, another folder, or a store we may not touch."""
    if resume and overwrite:
        raise ValueError("overwrite and resume exclude each other")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(
            f"{out} is a file; the Dask runner writes a sharded store, which is a folder: give a folder name "
            "(a single-file store is written without workers)"
        )
    if is_sharded_store(out):
        if not (resume or overwrite):
            raise FileExistsError(f"{out} already holds a sharded store; pass resume=True (--resume) to continue it "
                                  "or overwrite=True (--overwrite) to replace it")
    elif out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"{out} is a folder that holds files but no sharded store; give a new or empty folder")


def _check_resumed(out: Path, metadata: dict[str, Any]) -> None:
    """A resumed store must have been probed with the same model and options."""
    if not is_sharded_store(out):
        return
    old = read_manifest(out).get("metadata", {})
    for key, value in metadata.items():
        if old.get(key) != value:
            raise ValueError(f"{out} holds a store probed with another {key} ({str(old.get(key))[:80]}); resume "
                             "with the same model and options, or write to a new folder")


def run_probe(
    images: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str | Callable[[], Any] = "dinov2-s14-imgfocus",
    weights: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    shard_size: int = 8,
    shard_format: str = "h5",
    layers: Any = None,
    capture: Sequence[str] = ("q", "k", "v"),
    batch_size: int = 4,
    device: str | None = None,
    dtype: str | None = None,
    store_dtype: str | None = None,
    image_size: int | None = None,
    probe_options: dict[str, Any] | None = None,
    limit: int | None = None,
    model_name: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    retries: int = 2,
    progress: bool = True,
    connect_timeout: float = 10.0,
) -> dict[str, Any]:
    """Probe images into a sharded store on a Dask cluster, one task per shard of images.

    The store ``out`` is the folder :func:`interpret_spectral.open_store` opens as one
    store (``manifest.json``, ``shard-00000.h5``, ...); it equals a single-process
    ``probe`` of the same images, array for array.

    Parameters
    ----------
    images : path-like or sequence of path-like
        Image files and/or folders of images (paths every worker can read).
    out : path-like
        The sharded store's folder (new, or a store to resume or overwrite).
    model : str or callable
        A model spec of :func:`interpret_spectral.models.load_model`, or a picklable
        function of no argument that returns the model; loaded once per worker process.
    weights : path-like, optional
        Local weights for a spec, as seen from the workers.
    workers : int, optional
        Start a ``LocalCluster`` with this many worker processes (one thread each).
    scheduler : str, optional
        Address of a running Dask scheduler to join (``tcp://host:8786``).
    client : distributed.Client, optional
        A client you hold (not closed here).
    shard_size : int
        Images per task and per shard file.
    shard_format : {"h5", "zarr"}
        Shards as HDF5 files or zarr v3 stores (for object stores and concurrent
        writers; see :mod:`interpret_spectral.store.zarr_store`).
    layers : optional
        Sites to record.
    capture : sequence of str
        What to record: ``q``, ``k``, ``v`` and optionally ``features``.
    batch_size : int
        Images per forward pass within a shard.
    device : str, optional
        Device of every worker's model.
    dtype : {"float32", "float16", "bfloat16"}, optional
        Compute dtype of the forward passes.
    store_dtype : {"float32", "float16"}, optional
        Dtype the store records.
    image_size : int, optional
        Input size given to the adapter.
    probe_options : dict, optional
        Further adapter options for ``probe()``.
    limit : int, optional
        Use the first ``limit`` images.
    model_name : str, optional
        The model's name, recorded in every shard's metadata.
    resume : bool
        Continue the store in ``out``: only the shards that are missing are probed.
    overwrite : bool
        Replace the sharded store in ``out``: the new one is written beside it and swapped
        in only when complete.
    retries : int
        Times a shard that raised is retried (a dead worker's shard is always rerun).
    progress : bool
        A progress bar over shards.
    connect_timeout : float
        Seconds to wait for ``scheduler``.

    Returns
    -------
    dict
        ``store`` (the folder), ``samples``, ``shards``, ``shards_run``,
        ``setup_seconds`` (cluster start and model loads), ``wall_seconds`` after the
        setup and ``images_per_second`` over them.

    Raises
    ------
    SchedulerUnreachableError
        ``scheduler`` does not answer.
    WorkerSetupError
        A worker could not load the model (nothing is written then).
    FileExistsError
        ``out`` holds a store and neither ``resume`` nor ``overwrite``, or other files.

    Examples
    --------
    >>> from interpret_spectral import open_store
    >>> summary = run_probe("photos/", "out/store", workers=2, shard_size=8, image_size=224)  # doctest: +SKIP
    >>> open_store("out/store").sizes["sample"]  # doctest: +SKIP
    40
    """
    check_model(model)
    check_shard_format(shard_format)
    check_connection(workers, scheduler, client)
    final = Path(out).expanduser()
    _check_target(final, resume, overwrite)
    files, ids = image_plan(images, limit)
    options = probe_settings(probe_options, image_size, device, dtype, store_dtype)
    options["capture"] = [str(c) for c in capture]
    metadata = {"model": model_label(model), "layers": None if layers is None else str(layers),
                "probe_options": {k: str(v) for k, v in sorted(options.items())}}
    if resume:
        _check_resumed(final, metadata)
        if is_sharded_store(final):
            # the same images, shard size and format, or refused
            create_sharded_store(final, ids, shard_size, resume=True, shard_format=shard_format)
    target = partial_name(final) if overwrite and final.exists() else final
    key = model_key(model)
    try:
        setup = time.perf_counter()
        with cluster(workers, scheduler, client, connect_timeout) as client_:
            warm_workers(client_, model, key, None if weights is None else str(weights), device)
            setup = time.perf_counter() - setup
            started = time.perf_counter()
            if target != final:
                remove_path(target)
            manifest = create_sharded_store(target, ids, shard_size, resume=resume, metadata=metadata,
                                            shard_format=shard_format)
            todo = missing_shards(target)
            logger.info("%d shard(s) of %d image(s) to probe, %d already complete", len(todo), len(ids),
                        len(manifest["shards"]) - len(todo))
            shards = manifest["shards"]
            jobs = [
                ProbeJob(index=i, files=[str(f) for f in files[shards[i]["start"]:shards[i]["stop"]]],
                         ids=list(shards[i]["samples"]), store=str(target), model=model, model_key=key,
                         weights=None if weights is None else str(weights), device=device, probe_options=options,
                         model_name=model_name, layers=layers, batch_size=int(batch_size))
                for i in todo
            ]
            run_tasks(client_, _probe_shard, jobs, retries, progress)
        wall = time.perf_counter() - started
        sealed = seal_sharded_store(target)
        if not sealed["complete"]:
            raise RuntimeError(f"the sharded store {final} is not complete after the run; rerun with resume=True")
        remove_stale_partials(target)
        if target != final:
            replace_dir(target, final)
    finally:
        if target != final:
            remove_path(target)
    return {"store": str(final), "samples": ids, "shards": len(shards), "shards_run": len(todo),
            "setup_seconds": round(setup, 3), "wall_seconds": round(wall, 3),
            "images_per_second": round(len(ids) / wall, 4) if todo and len(todo) == len(shards) and wall > 0 else None}

"""``run_analyze``: the ``analyze`` job on a Dask cluster, a shard of images per task.

The run folder ``out``::

    run.json                      the plan: images, sample ids, shard size, keep, settings
    store/                        keep="store": a sharded store (open_store(out / "store"))
      manifest.json, shard-00000.h5, ...
    shards/shard-00000/           per shard: vectors_<g>.nc, labels_<g>.nc, contributions_<g>.nc,
                                  summary.json (renamed in when complete)
    vectors_<g>.nc labels_<g>.nc contributions_<g>.nc summary.json    every shard joined

A shard is written beside its final name (``.partial-<pid>``) and renamed in only
when complete, the store shard first and its results folder last, so a worker killed
mid-shard leaves nothing that looks complete: Dask reruns the task elsewhere and no
sample is lost or written twice.  ``resume=True`` redoes only the shards that are
not complete.  With ``keep="vectors"`` q/k/v stay in the worker's memory and are
never written: only eigenvectors, eigenvalues, labels and contributions are kept.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interpret_spectral.pipeline import (
    AnalyzeSettings,
    GraphResult,
    analyze_samples,
    concat_results,
    summarize,
    write_results,
)
from interpret_spectral.pipeline.job import StepTimer
from interpret_spectral.pipeline.outputs import top_sites
from interpret_spectral.runner._cluster import (
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
    plan_shards,
    remove_stale_partials,
    seal_sharded_store,
    shard_complete,
    shard_path,
)

__all__ = ["KEEP", "ShardJob", "run_analyze", "shard_done"]

KEEP = ("store", "vectors")
_PLAN = "run.json"
_RUN_FILES = ("summary.json",)

@dataclass(frozen=True)
class ShardJob:
    """One task: the images of a shard and where its results go (picklable, sent to a worker)."""

    index: int
    files: list[str]
    ids: list[str]
    out: str
    keep: str
    model: Any
    model_key: str
    weights: str | None
    settings: AnalyzeSettings
    probe_options: dict[str, Any] = field(default_factory=dict)
    model_name: str | None = None
    layers: Any = None
    batch_size: int = 4
    torch_threads: int = 1


# -- on the workers -----------------------------------------------------------------------------
def _shard_folder(out: Path, index: int) -> Path:
    return out / "shards" / f"shard-{index:05d}"


def _write_shard_results(folder: Path, results: dict[str, GraphResult], summary: dict[str, Any]) -> None:
    from interpret_spectral.store.results import save_netcdf

    staging = partial_name(folder)
    remove_path(staging)
    staging.mkdir(parents=True)
    try:
        write_results(staging, results)
        for name, result in results.items():
            save_netcdf(result.contributions, staging / f"contributions_{name}.nc")
        (staging / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        replace_dir(staging, folder)
    finally:
        remove_path(staging)


def _run_shard(job: ShardJob) -> dict[str, Any]:
    """The task: probe -> the pipeline's per-image job -> write the shard (on a worker)."""
    started = time.perf_counter()
    model = load_worker_model(job.model, job.model_key, job.weights, job.settings.device, job.torch_threads)
    out = Path(job.out)
    timer = StepTimer()

    def probed(into: Any) -> Any:
        return probe_files(model, job.files, job.ids, out=into, layers=job.layers, batch_size=job.batch_size,
                           model_name=job.model_name, options=job.probe_options)

    def analyze_store(store: Any) -> tuple[dict[str, GraphResult], dict[str, Any]]:
        results = analyze_samples(store, job.settings, progress=False, timer=timer)
        return results, summarize(store, job.settings, results, model_name=job.model_name, layers=job.layers)

    step = time.perf_counter()
    if job.keep == "store":
        with replacing_file(shard_path(out / "store", job.index)) as tmp:
            store = probed(tmp)
            timer.add("probe", step)
            try:
                results, summary = analyze_store(store)
            finally:
                store.close()
    else:
        store = probed(None)
        timer.add("probe", step)
        results, summary = analyze_store(store)
        del store
    summary["seconds"] = timer.seconds
    _write_shard_results(_shard_folder(out, job.index), results, summary)
    return {"index": job.index, "samples": list(job.ids), "pid": os.getpid(),
            "seconds": round(time.perf_counter() - started, 3)}


# -- on the client ------------------------------------------------------------------------------
def shard_done(out: str | os.PathLike[str], index: int, samples: Sequence[str], keep: str) -> bool:
    """Whether shard ``index`` of the run in ``out`` is complete (its results, and its store shard).

    Examples
    --------
    >>> import tempfile
    >>> shard_done(tempfile.mkdtemp(), 0, ["a"], "vectors")
    False
    """
    out = Path(out)
    if not (_shard_folder(out, index) / "summary.json").is_file():
        return False
    if keep == "vectors":
        return True
    return shard_complete(out / "store", {"name": shard_path(out / "store", index).name, "samples": list(samples)})


def _check_plan(out: Path, plan: dict[str, Any], resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: a finished or other run in ``out`` without overwrite / resume."""
    if resume and overwrite:
        raise ValueError("overwrite and resume exclude each other")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {out} is a file; give a folder name")
    existing = out / _PLAN
    if overwrite:  # the run goes to a staging folder, swapped in only when complete
        return
    if existing.is_file():
        if not resume:
            raise FileExistsError(f"{out} already holds a run ({_PLAN}); pass resume=True (--resume) to continue "
                                  "it or overwrite=True (--overwrite) to replace it")
        old = json.loads(existing.read_text())
        for key in ("ids", "shard_size", "keep"):
            if old.get(key) != plan.get(key):
                raise ValueError(f"{out} holds a run with another {key} ({str(old.get(key))[:60]}); resume with the "
                                 "same images, shard size and keep, or write to a new folder")
    elif (out / "store.h5").exists():
        raise FileExistsError(f"{out} holds a single-process run (store.h5); give another folder or pass overwrite=True")


def _settings_json(settings: AnalyzeSettings) -> dict[str, Any]:
    return {"graphs": settings.graph_names, "n_components": int(settings.n_components),
            "solver": str(getattr(settings.solver, "name", settings.solver)), "heads": settings.heads,
            "seed": int(settings.seed), "k": settings.k, "k_range": None if settings.k_range is None else
            [int(k) for k in settings.k_range], "k_method": settings.k_method, "crf": bool(settings.crf)}


def _read_shard(out: Path, index: int, settings: AnalyzeSettings) -> tuple[dict[str, GraphResult], dict[str, Any]]:
    import xarray as xr

    from interpret_spectral.store.results import open_decomposition, open_labels

    folder = _shard_folder(out, index)
    results = {}
    for kind in settings.kinds:
        name = kind.name
        with xr.open_dataarray(folder / f"contributions_{name}.nc", engine="h5netcdf") as opened:
            contributions = opened.load()
        results[name] = GraphResult(kind, open_decomposition(folder / f"vectors_{name}.nc"),
                                    open_labels(folder / f"labels_{name}.nc"), contributions)
    return results, json.loads((folder / "summary.json").read_text())


def _merge_summaries(parts: list[dict[str, Any]], joined: dict[str, GraphResult]) -> dict[str, Any]:
    """One summary from the shards' summaries (samples, eigenvalues, K and scores of every shard)."""
    summary = json.loads(json.dumps(parts[0]))
    summary["samples"] = [sid for part in parts for sid in part["samples"]]
    seconds: dict[str, float] = {}
    for part in parts:
        for step, value in part.get("seconds", {}).items():
            seconds[step] = round(seconds.get(step, 0.0) + float(value), 3)
    summary["worker_seconds"] = seconds
    summary.pop("seconds", None)
    for name, entry in summary["graphs"].items():
        for key in ("values", "k", "k_score", "silhouette"):
            if key in entry:
                entry[key] = {sid: v for part in parts for sid, v in part["graphs"][name].get(key, {}).items()}
        entry["sites_most_in_agreement"] = top_sites(joined[name].contributions)
        entry["contributions"] = f"contributions_{name}.nc"
    return summary


def run_analyze(
    images: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str | Callable[[], Any] = "dinov2-s14-imgfocus",
    weights: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    shard_size: int = 8,
    keep: str = "store",
    shard_format: str = "h5",
    graphs: Sequence[Any] = ("qk", "vv"),
    n_components: int = 10,
    solver: Any = "exact",
    k: int | None = None,
    k_range: Sequence[int] | None = None,
    k_method: str | None = None,
    heads: str = "each",
    layers: Any = None,
    seed: int = 0,
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
    """Run the ``analyze`` job on a Dask cluster, one task per shard of images.

    Parameters
    ----------
    images : path-like or sequence of path-like
        Image files and/or folders of images.
    out : path-like
        The run folder (layout in the module's docstring).
    model : str or callable
        A model spec of :func:`interpret_spectral.models.load_model` (``"dinov2-s14-imgfocus"``,
        ``"timm:NAME"``, ``"hf:NAME"``), or a picklable function of no argument that
        returns the model; either way it runs once per worker process.
    weights : path-like, optional
        Local weights for a spec (``load_model(weights=)``), as seen from the workers.
    workers : int, optional
        Start a ``LocalCluster`` with this many worker processes (one thread each).
    scheduler : str, optional
        Address of a running Dask scheduler to join (``tcp://host:8786``).
    client : distributed.Client, optional
        A client you hold (not closed here).
    shard_size : int
        Images per task and per shard file.
    keep : {"store", "vectors"}
        ``"store"`` writes q/k/v as a sharded store in ``out/store``; ``"vectors"``
        keeps q/k/v in memory only and writes just the results.
    shard_format : {"h5", "zarr"}
        With ``keep="store"``: shards as HDF5 files or zarr v3 stores.
    graphs, n_components, solver, k, k_range, k_method, heads, seed
        As :func:`interpret_spectral.pipeline.analyze`.
    layers : optional
        Sites to record and use.
    batch_size : int
        Images per forward pass within a shard.
    device : str, optional
        Device of every worker's model and decomposition (``"cuda"`` on dask-cuda workers).
    dtype : {"float32", "float16", "bfloat16"}, optional
        Compute dtype of the forward passes (``probe(dtype=)``).
    store_dtype : {"float32", "float16"}, optional
        Dtype the store records.
    image_size : int, optional
        Input size given to the adapter (``probe(image_size=)``).
    probe_options : dict, optional
        Further adapter options for ``probe()``.
    limit : int, optional
        Use the first ``limit`` images.
    model_name : str, optional
        The model's name for the summary.
    resume : bool
        Continue the run in ``out``: only shards that are not complete are run.
    overwrite : bool
        Replace an earlier run in ``out``: the new run is made in a staging folder beside it
        and swapped in only when complete, so a failed run leaves the earlier one intact.
    retries : int
        Times a shard that raised is retried (a dead worker's shard is always rerun).
    progress : bool
        A progress bar over shards.
    connect_timeout : float
        Seconds to wait for ``scheduler``.

    Returns
    -------
    dict
        The summary (also in ``out/summary.json``): every sample, per graph eigenvalues,
        K and scores per sample, the sites most in agreement, worker seconds per step,
        setup seconds (cluster start, model loads), wall seconds after the setup and
        images per second over them.

    Raises
    ------
    SchedulerUnreachableError
        ``scheduler`` does not answer.
    WorkerSetupError
        A worker could not load the model.
    FileExistsError
        ``out`` holds a run and neither ``resume`` nor ``overwrite``.

    Examples
    --------
    >>> run_analyze("photos/", "out/run", workers=2, keep="vectors", image_size=224)  # doctest: +SKIP
    """
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
    if isinstance(shard_size, bool) or int(shard_size) < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    check_shard_format(shard_format)
    check_model(model)
    settings = AnalyzeSettings(graphs=tuple(graphs), n_components=n_components, solver=solver, heads=heads, seed=seed,
                               k=k, k_range=k_range, k_method=k_method, device=device)
    files, ids = image_plan(images, limit)
    out = Path(out).expanduser()
    options = probe_settings(probe_options, image_size, device, dtype, store_dtype)
    shards = plan_shards(ids, shard_size)
    plan = {"files": [str(f) for f in files], "ids": ids, "shard_size": int(shard_size), "keep": keep,
            "shard_format": shard_format,
            "model": model_label(model),
            "settings": _settings_json(settings), "probe_options": {k: str(v) for k, v in options.items()}}
    _check_plan(out, plan, resume, overwrite)
    final = out
    if overwrite and out.exists():
        out = partial_name(final)  # the earlier run stays as it is until this one is complete
        remove_path(out)
    try:
        summary = _run_planned(out, final, plan, shards, settings, files, ids, model, weights, workers, scheduler,
                               client, connect_timeout, keep, options, model_name, layers, batch_size, retries,
                               progress, device, shard_size)
        if out != final:
            replace_dir(out, final, carry=lambda name: not _is_run_output(name))
    finally:
        if out != final:
            remove_path(out)
    return summary


def _is_run_output(name: str) -> bool:
    """Whether a file name in a run folder belongs to a distributed run (replaced by ``overwrite``)."""
    return name in (_PLAN, "store", "shards", *_RUN_FILES) or (
        name.endswith(".nc") and name.startswith(("vectors_", "labels_", "contributions_")))


def _run_planned(out: Path, final: Path, plan: dict[str, Any], shards: list[dict[str, Any]],
                 settings: AnalyzeSettings, files: list[Path], ids: list[str], model: Any, weights: Any,
                 workers: Any, scheduler: Any, client: Any, connect_timeout: float, keep: str,
                 options: dict[str, Any], model_name: Any, layers: Any, batch_size: int, retries: int,
                 progress: bool, device: Any, shard_size: int) -> dict[str, Any]:
    """Run the planned shards into ``out`` (``final`` itself, or its staging folder) and join them."""
    key = model_key(model)
    setup = time.perf_counter()
    with cluster(workers, scheduler, client, connect_timeout) as client_:
        warm_workers(client_, model, key, None if weights is None else str(weights), device)
        setup = time.perf_counter() - setup
        started = time.perf_counter()  # images per second: after the cluster and the models are up
        out.mkdir(parents=True, exist_ok=True)
        with replacing_file(out / _PLAN) as tmp:
            tmp.write_text(json.dumps(plan, indent=1) + "\n")
        if keep == "store":
            create_sharded_store(out / "store", ids, shard_size, resume=True, shard_format=plan["shard_format"],
                                 metadata={"run": str(final), "model": plan["model"]})
        todo = [i for i, s in enumerate(shards) if not shard_done(out, i, s["samples"], keep)]
        logger.info("%d shard(s) of %d image(s) to run, %d already complete", len(todo), len(ids),
                    len(shards) - len(todo))
        jobs = [
            ShardJob(index=i, files=[str(f) for f in files[shards[i]["start"]:shards[i]["stop"]]],
                     ids=shards[i]["samples"], out=str(out), keep=keep, model=model, model_key=key,
                     weights=None if weights is None else str(weights), settings=settings, probe_options=options,
                     model_name=model_name, layers=layers, batch_size=int(batch_size))
            for i in todo
        ]
        run_tasks(client_, _run_shard, jobs, retries, progress)
    return _finish(out, shards, settings, keep, time.perf_counter() - started, len(todo), setup)


def _finish(out: Path, shards: list[dict[str, Any]], settings: AnalyzeSettings, keep: str, wall: float,
            ran: int, setup: float) -> dict[str, Any]:
    """Join every shard's results and summary; seal the store; write the run's files."""
    from interpret_spectral.store.results import save_netcdf

    missing = [i for i, s in enumerate(shards) if not shard_done(out, i, s["samples"], keep)]
    if missing:
        raise RuntimeError(f"shards {missing[:5]} of {out} are not complete after the run; rerun with resume=True")
    parts = [_read_shard(out, i, settings) for i in range(len(shards))]
    joined = concat_results([results for results, _ in parts])
    summary = _merge_summaries([part for _, part in parts], joined)
    if keep == "store":
        manifest = seal_sharded_store(out / "store")
        if not manifest["complete"]:
            raise RuntimeError(f"the sharded store {out / 'store'} is not complete; rerun with resume=True")
        remove_stale_partials(out / "store")
        summary["store"] = "store"
    else:
        summary["store"] = None
    remove_stale_partials(out / "shards")
    write_results(out, joined)
    for name, result in joined.items():
        save_netcdf(result.contributions, out / f"contributions_{name}.nc")
    n = len(summary["samples"])
    summary.update({"keep": keep, "shards": len(shards), "shards_run": ran, "wall_seconds": round(wall, 3),
                    "setup_seconds": round(setup, 3),
                    "images_per_second": round(n / wall, 4) if ran == len(shards) and wall > 0 else None})
    with replacing_file(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary

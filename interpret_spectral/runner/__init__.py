"""The Dask runner: ``analyze``, ``probe`` and ``decompose`` over many images, a shard per task.

Three jobs, each split into tasks that run on a ``dask.distributed`` cluster:

- :func:`run_analyze`: the whole ``analyze`` job, a shard of images per task: probe ->
  decompose (every graph kind) -> segment -> site contributions -> write.
- :func:`run_probe`: images -> a sharded store (``open_store(out)`` opens it as one
  store), a shard of images per task.
- :func:`run_decompose`: the per-sample ``decompose`` of a store (a file or a sharded
  store), a block of samples per task, joined into one vectors file.

``workers=N`` starts a :class:`~distributed.LocalCluster` (worker processes with one
thread and one torch thread each); ``scheduler=ADDRESS`` joins a cluster started
elsewhere (dask-jobqueue, Kubernetes, dask-cuda: see ``docs/scaling.md``); ``client=``
uses one you hold.  A model is loaded once per worker process (a cached loader, warmed
on every worker before the first task), never per task.

Every task writes beside its final name (``.partial-<pid>``) and renames in only when
complete, so a worker killed mid-task leaves nothing that looks complete: Dask reruns
the task elsewhere and no sample is lost or written twice.  ``resume=True`` redoes only
what is missing.  An unreachable scheduler (:class:`SchedulerUnreachableError`) and a
worker that cannot load the model (:class:`WorkerSetupError`) stop a job in one line,
before anything is written.

Examples
--------
>>> summary = run_analyze(["photos/"], "out/photos", workers=2, image_size=224)  # doctest: +SKIP
>>> summary["images_per_second"]  # doctest: +SKIP
1.3
>>> run_probe("photos/", "out/store", workers=2, image_size=224)["shards"]  # doctest: +SKIP
5
>>> run_decompose("out/store", "out/vectors_qk.nc", graph="qk", workers=2).sizes["sample"]  # doctest: +SKIP
40
"""

from __future__ import annotations

from interpret_spectral.runner._analyze import KEEP, ShardJob, run_analyze, shard_done
from interpret_spectral.runner._cluster import SchedulerUnreachableError, WorkerSetupError
from interpret_spectral.runner._decompose import DecomposeJob, parts_folder, run_decompose
from interpret_spectral.runner._probe import ProbeJob, run_probe

__all__ = [
    "KEEP",
    "SchedulerUnreachableError",
    "WorkerSetupError",
    "ShardJob",
    "ProbeJob",
    "DecomposeJob",
    "run_analyze",
    "run_probe",
    "run_decompose",
    "shard_done",
    "parts_folder",
]

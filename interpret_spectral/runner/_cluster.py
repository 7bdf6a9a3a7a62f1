"""What every job of the runner shares: the cluster, the model cache of a worker, running tasks.

A job (``run_analyze``, ``run_probe``, ``run_decompose``) plans its tasks on the client,
connects (:func:`cluster`), loads the model once on every worker (:func:`warm_workers`)
when it needs one, and runs its tasks with :func:`run_tasks` (retries, a progress bar,
one clear line when a task fails).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "SchedulerUnreachableError",
    "WorkerSetupError",
    "one_line",
    "check_model",
    "model_key",
    "model_label",
    "limit_threads",
    "load_worker_model",
    "warm_workers",
    "image_plan",
    "probe_settings",
    "probe_files",
    "check_connection",
    "cluster",
    "dashboard",
    "run_tasks",
]

logger = logging.getLogger("interpret_spectral.runner")

_MODELS: dict[str, Any] = {}  # per worker process: the model, loaded once


class SchedulerUnreachableError(ConnectionError):
    """The Dask scheduler at the address given does not answer."""


class WorkerSetupError(RuntimeError):
    """A Dask worker could not load the model (or import or reach what the job needs)."""


def one_line(error: BaseException) -> str:
    """``Type: message`` on one line (a worker's exception, as the client reports it).

    Examples
    --------
    >>> one_line(ValueError("bad\\n  input"))
    'ValueError: bad input'
    """
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


# -- the model ----------------------------------------------------------------------------------
def check_model(model: Any) -> None:
    """Refuse a model that is neither a ``load_model()`` spec nor a function returning the model.

    Examples
    --------
    >>> check_model(42)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    TypeError: model must be a load_model() spec or a function that returns the model, got int
    """
    if not isinstance(model, str) and not callable(model):
        raise TypeError(f"model must be a load_model() spec or a function that returns the model, got {type(model).__name__}")
    if isinstance(model, str):
        from interpret_spectral.models.loaders import parse_model_spec

        parse_model_spec(model)


def model_key(model: Any) -> str:
    """The key of a model in a worker's cache: the spec itself, or a token of the loader function.

    Examples
    --------
    >>> model_key("timm:vit_tiny_patch16_224")
    'timm:vit_tiny_patch16_224'
    """
    if isinstance(model, str):
        return model
    from dask.base import tokenize

    return str(tokenize(model))


def model_label(model: Any) -> str:
    """What a plan records of the model: the spec, or the loader function's name.

    Examples
    --------
    >>> model_label("dinov2-s14-imgfocus"), model_label(len)
    ('dinov2-s14-imgfocus', 'len')
    """
    return model if isinstance(model, str) else getattr(model, "__name__", "a loader function")


def limit_threads(torch_threads: int) -> None:
    """One torch thread (or ``torch_threads``) in this worker process."""
    import torch

    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)


def load_worker_model(model: Any, key: str, weights: str | None, device: str | None, torch_threads: int = 1) -> Any:
    """The worker's model, loaded on first use and cached in the worker process.

    Examples
    --------
    >>> load_worker_model(lambda: "a model", "doc-example", None, None)
    'a model'
    """
    limit_threads(torch_threads)
    if key not in _MODELS:
        if isinstance(model, str):
            from interpret_spectral.models.loaders import load_model

            _MODELS[key] = load_model(model, weights, device=device)
        else:
            loaded = model()
            _MODELS[key] = loaded.to(device) if device is not None and hasattr(loaded, "to") else loaded
    return _MODELS[key]


def _warm_worker(model: Any, key: str, weights: str | None, device: str | None, torch_threads: int) -> int:
    """Load the model on one worker (``client.run``); returns the worker's process id."""
    load_worker_model(model, key, weights, device, torch_threads)
    return os.getpid()


def warm_workers(client: Any, model: Any, key: str, weights: str | None, device: str | None) -> dict[str, int]:
    """Load the model once on every worker before any task; a failure is one :class:`WorkerSetupError` line.

    Returns
    -------
    dict
        Worker address -> its process id.

    Examples
    --------
    >>> warm_workers(client, "dinov2-s14-imgfocus", "dinov2-s14-imgfocus", None, None)  # doctest: +SKIP
    {'tcp://127.0.0.1:40121': 4242, 'tcp://127.0.0.1:40123': 4243}
    """
    try:
        pids = client.run(_warm_worker, model, key, weights, device, 1)
    except Exception as error:  # the worker's own exception, re-raised here
        raise WorkerSetupError(
            f"a Dask worker could not load the model {model if isinstance(model, str) else key}: {one_line(error)}"
        ) from None
    logger.info("%d Dask worker(s) ready (processes %s)%s", len(pids), sorted(pids.values()), dashboard(client))
    return pids


# -- inputs and probe options -------------------------------------------------------------------
def image_plan(images: Any, limit: int | None) -> tuple[list[Path], list[str]]:
    """The image files named or inside the folders named, and their sample ids (file stems).

    Examples
    --------
    >>> image_plan("/no/such/folder", None)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    FileNotFoundError: /no/such/folder does not exist ...
    """
    from interpret_spectral.capture.inputs import list_inputs
    from interpret_spectral.pipeline import image_files

    paths = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    files = image_files(paths, limit)
    return files, [item.sample_id for item in list_inputs(files)[0]]


def probe_settings(probe_options: dict[str, Any] | None, image_size: int | None, device: str | None,
                   dtype: str | None, store_dtype: str | None) -> dict[str, Any]:
    """``probe()``'s keyword arguments of a job: adapter options, input size, device and dtypes.

    Examples
    --------
    >>> probe_settings({"capture": ["q", "k", "v"]}, 224, None, None, "float16")
    {'capture': ['q', 'k', 'v'], 'image_size': 224, 'store_dtype': 'float16'}
    """
    from interpret_spectral.pipeline.run import probe_keywords

    options = dict(probe_options or {})
    if image_size is not None:
        options["image_size"] = int(image_size)
    options.update(probe_keywords(device, dtype, store_dtype))
    return options


def probe_files(model: Any, files: Sequence[str], ids: Sequence[str], *, out: Any, layers: Any, batch_size: int,
                model_name: str | None, options: dict[str, Any]) -> Any:
    """A task's probe of its images (on a worker): in memory (``out=None``) or into ``out``.

    Examples
    --------
    >>> store = probe_files(model, ["a.jpg"], ["a"], out=None, layers=None, batch_size=4,
    ...                     model_name=None, options={})  # doctest: +SKIP
    """
    from interpret_spectral.capture.engine import probe

    metadata = {"model_name": model_name} if model_name else None
    return probe(model, list(files), out=out, layers=layers, batch_size=int(batch_size), progress=False,
                 sample_ids=list(ids), metadata=metadata, **options)


# -- the cluster --------------------------------------------------------------------------------
def _connect(workers: int | None, scheduler: str | None, client: Any, connect_timeout: float) -> tuple[Any, Any, bool]:
    """(client, cluster or None, whether we own the client); exactly one of the three is given."""
    try:
        from distributed import Client, LocalCluster
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("the Dask runner needs dask.distributed: pip install 'interpret-spectral[scale]'") from error
    if client is not None:
        return client, None, False
    if scheduler is not None:
        try:
            return Client(scheduler, timeout=f"{connect_timeout}s"), None, True
        except (OSError, TimeoutError) as error:
            raise SchedulerUnreachableError(
                f"cannot reach the Dask scheduler at {scheduler} within {connect_timeout:g} s ({type(error).__name__}); "
                "start one (`dask scheduler`, dask-jobqueue, ...) and give its address, e.g. tcp://host:8786"
            ) from None
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    local = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,  # type: ignore[arg-type]
                         dashboard_address=None, memory_limit=0, env=threads)
    return Client(local), local, True


def check_connection(workers: int | None, scheduler: str | None, client: Any) -> None:
    """Refuse anything but exactly one of ``workers``, ``scheduler`` and ``client`` (before any work).

    Examples
    --------
    >>> check_connection(2, "tcp://host:8786", None)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: give exactly one of workers=N (a local cluster), scheduler=ADDRESS or client=
    """
    if sum(x is not None for x in (workers, scheduler, client)) != 1:
        raise ValueError("give exactly one of workers=N (a local cluster), scheduler=ADDRESS or client=")
    if workers is not None and (isinstance(workers, bool) or int(workers) < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")


@contextmanager
def cluster(workers: int | None, scheduler: str | None, client: Any, connect_timeout: float) -> Iterator[Any]:
    """A Dask client: a new ``LocalCluster`` of ``workers`` processes, the cluster at ``scheduler``, or ``client``.

    What this opens it closes; a ``client`` given is left open.

    Raises
    ------
    SchedulerUnreachableError
        ``scheduler`` does not answer within ``connect_timeout`` seconds.

    Examples
    --------
    >>> with cluster(None, "tcp://127.0.0.1:9", None, 1) as client:  # doctest: +SKIP
    ...     pass
    Traceback (most recent call last):
    SchedulerUnreachableError: cannot reach the Dask scheduler at tcp://127.0.0.1:9 within 1 s ...
    """
    check_connection(workers, scheduler, client)
    held, local, owned = _connect(workers, scheduler, client, connect_timeout)
    try:
        yield held
    finally:
        if owned:
            held.close()
        if local is not None:
            local.close()


def dashboard(client: Any) -> str:
    """``; dashboard <link>`` when the cluster serves one (its address), else nothing."""
    try:
        link = client.dashboard_link
    except Exception:  # no dashboard (bokeh absent or disabled)
        return ""
    return f"; dashboard {link}" if link else ""


def run_tasks(client: Any, task: Callable[[Any], Any], jobs: Sequence[Any], retries: int, progress: bool,
              unit: str = "shard") -> list[Any]:
    """Run ``task(job)`` for every job on the cluster; the first failure cancels the rest, in one line.

    A job has ``index`` and ``ids`` (its samples).  A task that raised is retried
    ``retries`` times; a task whose worker died is always rerun elsewhere by Dask.

    Returns
    -------
    list
        What each task returned, in the order of ``jobs``.

    Raises
    ------
    RuntimeError
        ``<unit> <index> (<first id>..<last id>) failed: <the worker's error>``.

    Examples
    --------
    >>> run_tasks(client, print, [], retries=2, progress=False)  # doctest: +SKIP
    []
    """
    from distributed import as_completed
    from tqdm.auto import tqdm

    futures = {client.submit(task, job, retries=int(retries), pure=False,
                             key=f"{unit}-{job.index}-{os.getpid()}-{time.time_ns()}"): n for n, job in enumerate(jobs)}
    results: list[Any] = [None] * len(jobs)
    with tqdm(total=len(futures), desc=f"{unit}s", unit=unit, disable=not progress) as bar:
        for future in as_completed(futures):
            job = jobs[futures[future]]
            try:
                results[futures[future]] = future.result()
            except Exception as error:
                for other in futures:
                    other.cancel()
                raise RuntimeError(f"{unit} {job.index} ({job.ids[0]}..{job.ids[-1]}) failed: {one_line(error)}") from error
            bar.update(1)
    return results

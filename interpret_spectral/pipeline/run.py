"""The one-command job, :func:`analyze`: images -> store -> eigenvectors -> segments -> figures -> summary.json."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


from interpret_spectral.pipeline.job import AnalyzeSettings, StepTimer, analyze_samples
from interpret_spectral.pipeline.outputs import draw_figures, draw_overviews, summarize, write_results
from interpret_spectral.pipeline.run_folder import run_folder

__all__ = ["analyze"]


def probe_keywords(device: str | None, dtype: str | None, store_dtype: str | None) -> dict[str, Any]:
    """``probe()``'s device / dtype keywords, only those given (so its defaults apply).

    Examples
    --------
    >>> probe_keywords("cpu", None, "float16")
    {'device': 'cpu', 'store_dtype': 'float16'}
    """
    options: dict[str, Any] = {}
    if device is not None:
        options["device"] = device
    if dtype is not None:
        options["dtype"] = dtype
    if store_dtype is not None:
        options["store_dtype"] = store_dtype
    return options


# -- the whole job ------------------------------------------------------------------------------
def analyze(
    model: Any,
    inputs: Any,
    out: str | os.PathLike[str],
    *,
    graphs: Sequence[Any] = ("qk", "vv"),
    n_components: int = 10,
    solver: Any = "exact",
    k: int | None = None,
    k_range: Sequence[int] | None = None,
    k_method: str | None = None,
    crf: bool = False,
    layers: Any = None,
    heads: str = "each",
    timesteps: Sequence[int] | None = None,
    batch_size: int = 4,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    store_dtype: str | None = None,
    figures: bool = True,
    figure_start: int = 1,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    sample_ids: Sequence[str] | None = None,
    model_name: str | None = None,
    probe_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Images to store, eigenvectors, segments, figures and ``summary.json``, in one call.

    Writes into ``out``: ``store.h5`` (the activation store), per graph kind
    ``vectors_<graph>.nc`` (``decompose()``), ``labels_<graph>.nc`` (``segment()``),
    ``figures/`` (eigenvectors as RGB, segments over the image, per-site
    contributions) and ``summary.json`` (what was done, the eigenvalues, the K chosen
    per sample and its score, the sites that agree most with each solution, seconds
    per step).  Everything is written beside ``out`` first and swapped in only when
    complete: a failing run (even with ``overwrite``) leaves an earlier run intact.

    Parameters
    ----------
    model : object
        A model some adapter knows (see :func:`interpret_spectral.probe`).
    inputs : list of PIL images or paths, or a folder
        The images.
    out : path-like
        Output folder.
    graphs : sequence of str or graph kinds
        Registered graph kinds to decompose (``"qk"``: attention, 'where'; ``"vv"``:
        values, 'what'; or any kind registered by a plugin).
    n_components : int
        Eigenvectors per sample.
    solver : str or solver
        A registered eigen-solver (``"exact"``, ``"adam"``, ...).
    k, k_range, k_method
        Segments per image: a fixed ``k``, or chosen per image by ``k_method`` within
        ``k_range`` (``segment()``'s defaults when None).
    crf : bool
        Refine the segments with a dense CRF on each image (``segment(refine="crf")``).
    layers : optional
        Sites to record and use (indices, names or glob patterns); all when None.
    heads : {"each", "concat"}
        One graph per head, or heads concatenated.
    timesteps : sequence of int, optional
        Diffusion timesteps to record (diffusers pipelines only).
    batch_size : int
        Images per forward pass.
    seed : int
        Seed of the solver and of K-Means.
    device : str, optional
        Device of the forward passes and the decomposition (``"cuda"``, ...).
    dtype : str, optional
        Compute dtype of the forward passes (``probe(dtype=)``).
    store_dtype : str, optional
        Dtype the store records (``probe(store_dtype=)``).
    figures : bool
        Draw the figures.
    figure_start : int
        First component of the eigenvector figures (component 0 of a random-walk
        operator is close to constant).
    overwrite, resume : bool
        Replace an earlier run in ``out`` (only once the new one is complete), or
        continue its store (or that of an interrupted run).
    progress : bool
        Show progress bars.
    sample_ids : sequence of str, optional
        Ids of the images (default: file stems, or ``image-<i>``).
    model_name : str, optional
        The model's name for the summary.
    probe_options : dict, optional
        Adapter options for ``probe()``, e.g. ``{"image_size": 224}``.

    Returns
    -------
    dict
        The summary (also written to ``out/summary.json``).

    Examples
    --------
    >>> from interpret_spectral.models import load_model
    >>> summary = analyze(load_model(), ["cat.jpg", "dog.jpg"], "out/pets")  # doctest: +SKIP
    >>> summary["graphs"]["qk"]["k"]  # doctest: +SKIP
    {'cat': 4, 'dog': 3}
    """
    from interpret_spectral.capture.engine import probe

    settings = AnalyzeSettings(
        graphs=tuple(graphs), n_components=n_components, solver=solver, heads=heads, seed=seed, k=k,
        k_range=k_range, k_method=k_method, crf=crf, device=device,
    )
    out = Path(out).expanduser()
    timer = StepTimer()
    options = dict(probe_options or {})
    if timesteps is not None:
        options["timesteps"] = list(timesteps)
    options.update(probe_keywords(device, dtype, store_dtype))
    with run_folder(out, overwrite, resume) as staging:
        store_path = staging / "store.h5"
        started = time.perf_counter()
        store = probe(
            model, inputs, out=store_path, layers=layers, batch_size=batch_size, resume=store_path.exists(),
            progress=progress, sample_ids=sample_ids, metadata={"model_name": model_name} if model_name else None,
            **options,
        )
        timer.add("probe", started)
        try:
            # The store holds only the sites chosen by ``layers``: the job uses all of them.
            results = analyze_samples(store, settings, progress=progress, timer=timer)
            write_results(staging, results)
            summary = summarize(store, settings, results, model_name=model_name, layers=layers)
            if figures:
                started = time.perf_counter()
                for result in results.values():
                    written = draw_figures(store, result, staging / "figures", figure_start, progress)
                    summary["figures"].extend(str(p.relative_to(staging)) for p in written)
                summary["figures"].extend(
                    str(p.relative_to(staging)) for p in draw_overviews(store, results, staging, figure_start, progress)
                )
                timer.add("figures", started)
        finally:
            store.close()
        summary["seconds"] = timer.seconds
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary

"""The paper's gradient solver: Eq. 4 minimised by Adam, for one image or a whole dataset.

One :class:`AdamSolver` serves both levels.  The operator hands it a schedule of
draws (:mod:`interpret_spectral.spectral.eq4`): for one image, one timestep's graphs
per step; for a dataset, every minibatch's top-k graphs for ``steps_per_batch`` steps
(the authors' procedure).  The solver owns the parameters (one block of maps per image),
Adam, the parametrization, gradient accumulation, checkpoints, and the finish.

``parametrization="softmax"`` makes ``X`` the softmax over components of free logits
(the authors produce those logits with a small CNN from a fixed random input, or a
per-image lookup table at dataset level; here the logits themselves are the
parameters), ``"free"`` makes ``X`` the parameter.  The authors weigh the two terms of
Eq. 4 2 and 2; Adam is invariant to the scale of the loss, so only their ratio,
``ortho_weight = 1``, matters.  ``accumulate`` loss evaluations are summed before every
Adam update (``accum_grads``).

Eq. 4 and the exact problem share their optimum only approximately: the soft
orthogonality lets maps lean towards the top eigenvector when that gains more
Rayleigh quotient than the penalty costs, and ``|x^T P x - 1|`` stops rewarding a
quotient at 1 where ``sym(P)`` can exceed 1.  On planted groups the two subspaces are a
few degrees apart; on DINOv2-S/14 attention with 10 components their median principal
angle was 9-13 degrees (``benchmarks/bench_decompose.py``).

The maps end as Eq. 8 writes it (``orthogonalize="rotate"``: ``X U``, the rows of ``X``
rotated, so K-Means sees the distances of the solution itself), or whitened and
Rayleigh-Ritz rotated (``"whiten"``: orthonormal columns, the best approximations of
``M``'s eigenvectors in the span); see :func:`~interpret_spectral.spectral.finish.finish`.
A checkpoint (``.safetensors`` or ``.npz``, written atomically) holds the whole state
(maps, Adam moments, RNG state, the schedule's position) and resumes bit-exactly.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interpret_spectral.spectral.eq4 import eq4_loss
from interpret_spectral.spectral.finish import ORTHOGONALIZE, apply_numpy, check_components, finish
from interpret_spectral.spectral.solvers import Solution, Solver, register_solver, solve_exact

__all__ = ["AdamSolver", "solve_adam", "PARAMETRIZATIONS", "INITS", "CHECKPOINT_SUFFIXES"]

PARAMETRIZATIONS: tuple[str, ...] = ("free", "softmax")
INITS: tuple[str, ...] = ("random", "exact")
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".safetensors", ".npz")
_CHECKPOINT_FORMAT = "interpret_spectral.adam_checkpoint/2"

#: Default steps of the per-image solver, from a random start and from the exact solution.
ADAM_STEPS = 1000
ADAM_STEPS_FROM_EXACT = 100


def _softmax_init_from(vectors: np.ndarray, seed: int) -> np.ndarray:
    """Logits whose softmax is a soft version of K-Means clusters of the rows of ``vectors``."""
    from sklearn.cluster import KMeans

    n_components = vectors.shape[1]
    labels = KMeans(n_clusters=n_components, n_init=4, random_state=seed).fit_predict(vectors)
    soft = np.full(vectors.shape, 0.2 / n_components)
    soft[np.arange(len(labels)), labels] += 0.8
    return np.log(soft)


# -- checkpoints ---------------------------------------------------------------------------------
def _save_checkpoint(path: Path, arrays: dict[str, torch.Tensor], config: Mapping[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder, fsync, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    metadata = json.dumps({"format": _CHECKPOINT_FORMAT, "config": dict(config)}, sort_keys=True, default=str)
    arrays = {name: value.detach().cpu().contiguous() for name, value in arrays.items()}
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(arrays, str(tmp), metadata={"interpret_spectral": metadata})
        else:
            with open(tmp, "wb") as handle:
                np.savez(handle, metadata=np.array(metadata), **{k: v.numpy() for k, v in arrays.items()})
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                metadata = json.loads((handle.metadata() or {})["interpret_spectral"])
                arrays = {name: handle.get_tensor(name) for name in handle.keys()}
        else:
            with np.load(path, allow_pickle=False) as handle:
                metadata = json.loads(str(handle["metadata"]))
                arrays = {name: torch.from_numpy(handle[name].copy()) for name in handle.files if name != "metadata"}
    except (KeyError, ValueError, OSError, SafetensorError) as error:
        raise ValueError(
            f"{path} is not a decompose_dataset checkpoint ({type(error).__name__}: {error}); "
            "delete it or pass another checkpoint path"
        ) from error
    if metadata.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a decompose_dataset checkpoint of format {_CHECKPOINT_FORMAT}")
    return arrays, metadata["config"]


def _capture(optimizer: torch.optim.Adam, params: Sequence[torch.Tensor], generator: torch.Generator,
             evaluations: int, schedule: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    logits = torch.stack([p.detach() for p in params])
    exp_avg, exp_avg_sq = torch.zeros_like(logits), torch.zeros_like(logits)
    adam_step = torch.zeros(len(params), dtype=torch.float32)
    for i, p in enumerate(params):
        entry = optimizer.state.get(p)
        if entry:
            exp_avg[i], exp_avg_sq[i], adam_step[i] = entry["exp_avg"], entry["exp_avg_sq"], float(entry["step"])
    arrays = {"logits": logits, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "adam_step": adam_step,
              "rng_state": generator.get_state(), "evaluations": torch.tensor([evaluations], dtype=torch.int64)}
    arrays.update({f"schedule.{key}": torch.as_tensor(value) for key, value in schedule.items()})
    return arrays


def _restore(optimizer: torch.optim.Adam, params: Sequence[torch.Tensor], arrays: Mapping[str, torch.Tensor]) -> None:
    saved = optimizer.state_dict()
    saved["state"] = {
        i: {"step": arrays["adam_step"][i].clone(), "exp_avg": arrays["exp_avg"][i].clone(),
            "exp_avg_sq": arrays["exp_avg_sq"][i].clone()}
        for i in range(len(params))
        if float(arrays["adam_step"][i]) > 0
    }
    optimizer.load_state_dict(saved)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class AdamSolver(Solver):
    """``"adam"``: the paper's Eq. 4 minimised by Adam (see the module docstring and :func:`solve_adam`)."""

    name = "adam"
    minibatch = True

    def memory_bytes(self, size: int, n_components: int, **options: Any) -> int:
        return 8 * size * n_components * 8  # maps, two moments, gradients, products

    def solve(
        self,
        operator: Any,
        n_components: int,
        *,
        seed: int = 0,
        steps: int | None = None,
        lr: float | None = None,
        parametrization: str = "softmax",
        ortho_weight: float = 1.0,
        accumulate: int = 1,
        init: str = "random",
        orthogonalize: str = "rotate",
        cache_bytes: int = 2**30,
        exact_options: Mapping[str, Any] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int | None = None,
        config: Mapping[str, Any] | None = None,
        progress: bool = False,
        moving_average: float | None = None,
    ) -> Solution:
        n_components = check_components(operator, n_components)
        if moving_average is not None and not 0.0 <= float(moving_average) < 1.0:
            raise ValueError(f"moving_average is a decay in [0, 1), got {moving_average!r}")
        if moving_average is not None and checkpoint is not None:
            raise ValueError("moving_average is not kept in checkpoints; use one or the other")
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if orthogonalize not in ORTHOGONALIZE:
            raise ValueError(f"orthogonalize must be one of {ORTHOGONALIZE}, got {orthogonalize!r}")
        blocks = int(getattr(operator, "num_blocks", 1))
        if operator.fixed_schedule:
            if steps is not None:
                raise ValueError("this operator fixes its own steps (epochs x minibatches x steps per minibatch); "
                                 "leave steps=None")
        elif steps is None:
            steps = ADAM_STEPS if init == "random" else ADAM_STEPS_FROM_EXACT
        else:
            steps = _positive_int("steps", steps)
        accumulate = _positive_int("accumulate", accumulate)
        if lr is None:
            lr = 0.05 if parametrization == "softmax" else 0.01
        if not lr > 0 or not math.isfinite(lr):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        if not ortho_weight >= 0 or not math.isfinite(ortho_weight):
            raise ValueError(f"ortho_weight must be a non-negative number, got {ortho_weight!r}")
        path = None if checkpoint is None else Path(checkpoint)
        if path is not None and path.suffix not in CHECKPOINT_SUFFIXES:
            raise ValueError(f"checkpoint must end in {' or '.join(CHECKPOINT_SUFFIXES)}, got {path}")
        if init == "exact" and blocks > 1:
            raise ValueError("init='exact' needs the full operator of one image; the dataset level starts at random")
        options: dict[str, Any] = {
            "steps": steps, "lr": float(lr), "parametrization": parametrization,
            "ortho_weight": float(ortho_weight), "accumulate": accumulate, "init": init,
            "orthogonalize": orthogonalize, "seed": seed, "cache_bytes": int(cache_bytes),
        }
        start = time.perf_counter()
        cached = operator.cache(int(cache_bytes))
        generator = torch.Generator().manual_seed(int(seed))
        size = operator.size
        saved: dict[str, torch.Tensor] | None = None
        if path is not None and path.exists():
            saved, saved_config = _load_checkpoint(path)
            wanted = dict(config or {})
            differing = sorted(key for key in set(wanted) | set(saved_config)
                               if key != "epochs" and wanted.get(key) != saved_config.get(key))
            if differing:
                raise ValueError(
                    f"checkpoint {path} was written with other settings ({', '.join(differing)} differ); "
                    "resume with the same store and settings (only epochs may change), or pass a new checkpoint path"
                )
            generator.set_state(saved["rng_state"])
            initial = saved["logits"]
        elif init == "exact":
            exact = solve_exact(operator, n_components, seed=seed, **dict(exact_options or {}))
            options["exact_method"] = exact.method
            values = exact.vectors * math.sqrt(size) if parametrization == "free" else _softmax_init_from(
                exact.vectors, seed)
            initial = torch.tensor(values, dtype=operator.dtype).reshape(1, size, n_components)
        else:
            initial = torch.randn(blocks, size // blocks, n_components, generator=generator, dtype=operator.dtype)
        params = [initial[i].clone().to(operator.device).requires_grad_(True) for i in range(blocks)]
        optimizer = torch.optim.Adam(params, lr=float(lr))
        evaluations = 0
        schedule_state = None
        if saved is not None:
            _restore(optimizer, params, saved)
            evaluations = int(saved["evaluations"][0])
            schedule_state = {key[len("schedule."):]: value for key, value in saved.items()
                              if key.startswith("schedule.")}
        del saved

        average = None if moving_average is None else [p.detach().clone() for p in params]

        def update_average() -> None:
            if average is not None:
                with torch.no_grad():
                    for kept, p in zip(average, params):
                        kept.mul_(float(moving_average)).add_(p.detach(), alpha=1.0 - float(moving_average))

        def maps(indices: Sequence[int], source: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
            x = torch.stack([(params if source is None else source)[i] for i in indices])
            return torch.softmax(x, dim=-1) if parametrization == "softmax" else x

        total, done, draws = operator.eq4_schedule(generator, steps=steps, state=schedule_state)
        from tqdm.auto import tqdm

        with tqdm(total=total, initial=done, disable=not progress, desc="adam",
                  unit="draw") as bar:
            since_save = 0
            for draw in draws:
                for _ in range(draw.repeat):
                    loss = eq4_loss(draw.terms(maps(draw.blocks)), float(ortho_weight))
                    loss.backward()
                    evaluations += 1
                    if evaluations % accumulate == 0:
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        update_average()
                since_save += 1
                bar.update(1)
                if progress:
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                if path is not None and draw.state is not None and (
                    draw.epoch_end or (checkpoint_every is not None and since_save >= checkpoint_every)
                ):
                    _save_checkpoint(path, _capture(optimizer, params, generator, evaluations, draw.state),
                                     config or {})
                    since_save = 0
        if evaluations % accumulate:
            optimizer.step()  # the gradients of the last, incomplete accumulation
            optimizer.zero_grad(set_to_none=True)
            update_average()
        if average is not None:
            options["moving_average"] = float(moving_average)
        with torch.no_grad():
            x = maps(range(blocks), average).reshape(size, n_components)
            final_loss = operator.eq4_objective(x, float(ortho_weight))
            x = x.cpu().to(torch.float64).numpy()
        vectors, values = finish(x, apply_numpy(operator), orthogonalize)
        operator.release(cached)
        options["steps"] = evaluations if steps is None else steps
        return Solution(vectors, values, int(options["steps"]), time.perf_counter() - start, "adam",
                        final_loss, options)


ADAM = register_solver(AdamSolver())


def solve_adam(operator: Any, n_components: int, **options: Any) -> Solution:
    """Eq. 4 of the paper minimised by Adam, as the authors run it (see the module docstring).

    Parameters
    ----------
    operator : LayerDistributedOperator
        The graphs (with their timesteps) and resampling.
    n_components : int
        Number of maps.
    steps : int, optional
        Loss evaluations (the authors' ``train_steps``).  Default 1000 from a random
        start, 100 from ``init="exact"``.
    lr : float, optional
        Adam's learning rate.  Default 0.05 for ``"softmax"`` and 0.01 for ``"free"``:
        the parameters here are the logits / maps themselves (unit-scale entries), not
        the weights of the authors' CNN (their lr is 1e-3 to 2e-3).
    parametrization : {"softmax", "free"}
        ``X = softmax(logits)`` over components (the authors'), or ``X`` itself.
    ortho_weight : float
        Weight of the orthogonality term relative to the eigenvalue term.
    accumulate : int
        Loss evaluations whose gradients are summed before each Adam update.
    init : {"random", "exact"}
        Standard-normal parameters, or a start from the exact solution: ``"free"``
        starts at the eigenvectors (scaled to unit-scale entries), ``"softmax"`` at
        logits of a soft K-Means clustering (k = ``n_components``) of their rows.
    orthogonalize : {"rotate", "whiten"}
        Eq. 8 as the paper writes it (``X U``, default) or whitened and Rayleigh-Ritz
        rotated (orthonormal columns).
    seed : int
        Seeds the start, the timestep draws and the exact start.
    cache_bytes : int
        Memory for caching the dense ``P`` of the graphs (as the authors do); graphs
        beyond it recompute attention on every step.
    exact_options : mapping, optional
        Options of :func:`~interpret_spectral.spectral.solvers.solve_exact` for ``init="exact"``.
    checkpoint, checkpoint_every, config, progress
        A checkpoint file to resume from and write to, how many draws apart, the
        settings it must match, and a progress bar (used by the dataset level).

    Returns
    -------
    Solution

    Examples
    --------
    >>> import numpy as np
    >>> from interpret_spectral.spectral import SiteGraphs, LayerDistributedOperator
    >>> v = np.random.default_rng(0).normal(size=(2, 16, 4))
    >>> op = LayerDistributedOperator([SiteGraphs.from_tokens("vv", grid=4, v=v)], out_grid=4)
    >>> solve_adam(op, 3, steps=20).vectors.shape
    (16, 3)
    """
    return ADAM.solve(operator, n_components, **options)

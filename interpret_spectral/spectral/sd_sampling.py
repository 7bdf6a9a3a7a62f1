"""Paper-faithful diffusion sampling: random timesteps, fresh noise, an attention buffer.

The paper (Appendix B) and the authors' code decompose Stable Diffusion's attention
over random draws rather than a fixed list of timesteps:

- every forward pass draws ``t ~ U[0, t_max]`` (``t_max = 500``) and fresh noise;
- the Adam solver keeps a buffer of ``buffer_size = 5`` attention sets: at every
  backward pass, with probability ``refresh = 1/4`` (or while the buffer is not yet
  full) a new set is drawn, replaces the oldest and is used; otherwise a set drawn
  uniformly from the buffer is reused;
- gradients are accumulated over ``accumulate = 20`` backward passes per Adam update.

Here the draws are recorded first: ``probe(pipe, images, sampling=DiffusionSampling())``
runs the UNet once per draw (the adapter takes :meth:`DiffusionSampling.timesteps`, and
a fresh noise field per draw), so the store's ``timestep`` dimension holds the draws.
Then

- ``decompose(store, solver="exact")`` solves the expected operator over the draws
  (``M`` is the mean over the recorded draws, the Monte-Carlo estimate of
  ``E_t,noise[M]``);
- ``decompose(store, solver=sampling.solver())`` (or ``solver="adam-buffer"``, the
  defaults) runs Adam with the buffer over the recorded draws: a "new" set is the
  next recorded draw not yet used, in a random order, reshuffled once all were used.
  With at least ``steps * refresh + buffer_size`` recorded draws every new set is
  fresh, as in the paper; with fewer, draws are reused.

Draws are distinct timesteps (drawn without replacement from ``{0, ..., t_max}``),
so every draw is addressable by its timestep in the store; each one is still
uniform on ``{0, ..., t_max}``.

Examples
--------
>>> sampling = DiffusionSampling(n_draws=4, seed=0)
>>> t = sampling.timesteps()
>>> len(t), bool(((0 <= t) & (t <= 500)).all()), len(set(t.tolist()))
(4, True, 4)
>>> trace = buffer_trace(n_draws=8, steps=12, buffer_size=3, refresh=0.25, seed=0)
>>> trace.used.shape, bool(trace.fresh[:3].all())
((12,), True)
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from interpret_spectral.spectral.adam import AdamSolver
from interpret_spectral.spectral.eq4 import Eq4Draw
from interpret_spectral.spectral.solvers import Solution, register_solver

__all__ = ["DiffusionSampling", "BufferTrace", "buffer_trace", "BufferedAdamSolver"]


def _check(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class DiffusionSampling:
    """The paper's sampling of diffusion timesteps and attention sets.

    Parameters
    ----------
    t_max : int
        Timesteps are drawn uniformly from ``{0, ..., t_max}`` (paper: 500).
    n_draws : int
        Forward passes recorded per image by ``probe`` (distinct timesteps).
    buffer_size : int
        Attention sets in the Adam solver's buffer (paper: 5).
    refresh : float
        Probability that a backward pass draws a new set, which replaces the oldest
        in the buffer (paper: 1/4).
    accumulate : int
        Backward passes summed per Adam update (paper: 20).
    seed : int
        Seeds the timesteps and the noise of the draws.

    Examples
    --------
    >>> DiffusionSampling(t_max=10, n_draws=11).timesteps().tolist() == sorted(
    ...     DiffusionSampling(t_max=10, n_draws=11).timesteps().tolist()) # a permutation, not sorted
    False
    """

    t_max: int = 500
    n_draws: int = 20
    buffer_size: int = 5
    refresh: float = 0.25
    accumulate: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        _check("t_max", self.t_max, 0)
        _check("n_draws", self.n_draws, 1)
        _check("buffer_size", self.buffer_size, 1)
        _check("accumulate", self.accumulate, 1)
        if not 0.0 < float(self.refresh) <= 1.0:
            raise ValueError(f"refresh is a probability in (0, 1], got {self.refresh!r}")
        if self.n_draws > self.t_max + 1:
            raise ValueError(
                f"n_draws={self.n_draws} distinct timesteps do not fit in [0, {self.t_max}]; "
                f"use n_draws <= {self.t_max + 1}"
            )

    def timesteps(self, limit: int | None = None) -> np.ndarray:
        """The draws' timesteps, in draw order: distinct, each uniform on ``{0, ..., t_max}``.

        Parameters
        ----------
        limit : int, optional
            The scheduler's number of training timesteps; ``t_max`` must lie below it.

        Examples
        --------
        >>> DiffusionSampling(n_draws=3, seed=1).timesteps().dtype
        dtype('int64')
        """
        if limit is not None and self.t_max >= int(limit):
            raise ValueError(f"t_max={self.t_max} must lie below the scheduler's {limit} timesteps")
        rng = np.random.default_rng([int(self.seed), 0x5D])
        return rng.choice(self.t_max + 1, size=self.n_draws, replace=False).astype(np.int64)

    def noise_seed(self, draw: int) -> int:
        """Seed of the noise field of draw ``draw`` (a fresh field per draw).

        Examples
        --------
        >>> DiffusionSampling().noise_seed(0) != DiffusionSampling().noise_seed(1)
        True
        """
        return int(np.random.SeedSequence([int(self.seed), 0x4E, int(draw)]).generate_state(1)[0])

    def describe(self) -> dict[str, Any]:
        """The settings, for a store's attributes.

        Examples
        --------
        >>> DiffusionSampling().describe()["t_max"]
        500
        """
        return dataclasses.asdict(self)

    def solver(self, **adam_options: Any) -> BufferedAdamSolver:
        """The Adam solver with this buffer and accumulation (``decompose(store, solver=...)``).

        Examples
        --------
        >>> DiffusionSampling(buffer_size=3).solver(steps=40).name
        'adam-buffer'
        """
        return BufferedAdamSolver(self, **adam_options)


@dataclasses.dataclass(frozen=True)
class BufferTrace:
    """What the buffer did at every backward pass.

    Attributes
    ----------
    used : numpy.ndarray
        ``(steps,)`` index of the recorded draw used.
    fresh : numpy.ndarray
        ``(steps,)`` whether a new set was drawn (and replaced the oldest).
    replaced : numpy.ndarray
        ``(steps,)`` the draw that left the buffer, -1 where none left.
    """

    used: np.ndarray
    fresh: np.ndarray
    replaced: np.ndarray


def _buffer_steps(n_draws: int, steps: int, buffer_size: int, refresh: float,
                  rng: np.random.Generator) -> Iterator[tuple[int, bool, int]]:
    """``(draw used, new?, draw evicted or -1)`` per backward pass (the authors' buffer)."""
    buffer: deque[int] = deque()
    queue: list[int] = []
    for _ in range(steps):
        if len(buffer) == buffer_size and rng.uniform() >= refresh:
            yield buffer[int(rng.integers(len(buffer)))], False, -1
            continue
        if not queue:
            queue = rng.permutation(n_draws).tolist()
        new = queue.pop()
        evicted = buffer.popleft() if len(buffer) == buffer_size else -1
        buffer.append(new)
        yield new, True, evicted


def buffer_trace(n_draws: int, steps: int, buffer_size: int = 5, refresh: float = 0.25,
                 seed: int | np.random.Generator = 0) -> BufferTrace:
    """Run the buffer alone: which recorded draw every backward pass uses.

    Parameters
    ----------
    n_draws : int
        Recorded draws (attention sets) available.
    steps : int
        Backward passes.
    buffer_size, refresh : int, float
        As :class:`DiffusionSampling`.
    seed : int or numpy.random.Generator

    Returns
    -------
    BufferTrace

    Examples
    --------
    >>> trace = buffer_trace(20, 400, seed=1)
    >>> bool(0.15 < trace.fresh[5:].mean() < 0.35)
    True
    """
    n_draws, steps, buffer_size = _check("n_draws", n_draws, 1), _check("steps", steps, 0), _check(
        "buffer_size", buffer_size, 1)
    if not 0.0 < float(refresh) <= 1.0:
        raise ValueError(f"refresh is a probability in (0, 1], got {refresh!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    rows = list(_buffer_steps(n_draws, steps, buffer_size, float(refresh), rng))
    used, fresh, replaced = (np.array([row[i] for row in rows], dtype=dtype)
                             for i, dtype in ((0, np.int64), (1, bool), (2, np.int64)))
    return BufferTrace(used.reshape(-1), fresh.reshape(-1), replaced.reshape(-1))


class _BufferedOperator:
    """A per-image operator whose Eq. 4 schedule goes through the buffer (else the operator itself)."""

    def __init__(self, operator: Any, sampling: DiffusionSampling) -> None:
        if not hasattr(operator, "_timestep_groups"):
            raise TypeError(
                "the buffered Adam solver runs on one image's layer-distributed operator (decompose()); "
                "decompose_dataset has its own minibatch schedule"
            )
        self._operator = operator
        self._sampling = sampling

    def __getattr__(self, name: str) -> Any:
        return getattr(self._operator, name)

    def eq4_schedule(self, generator: torch.Generator, steps: int | None = None,
                     state: dict[str, Any] | None = None) -> tuple[int, int, Iterator[Eq4Draw]]:
        if steps is None:
            raise ValueError("the buffered schedule needs the number of steps")
        operator = self._operator
        keys, groups = operator._timestep_groups()
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        sampling = self._sampling

        def draws() -> Iterator[Eq4Draw]:
            for used, _, _ in _buffer_steps(len(keys), int(steps), sampling.buffer_size, float(sampling.refresh), rng):
                graphs = groups[keys[used]]
                yield Eq4Draw([0], lambda x, graphs=graphs: operator.eq4_terms(graphs, x))

        return int(steps), 0, draws()


class BufferedAdamSolver(AdamSolver):
    """The Adam solver of the paper's diffusion setting: the attention buffer and gradient accumulation.

    ``steps`` counts backward passes; Adam updates every ``sampling.accumulate`` of them.
    Every other option is :class:`~interpret_spectral.spectral.adam.AdamSolver`'s.

    Parameters
    ----------
    sampling : DiffusionSampling, optional
        The buffer's settings (default: the paper's).
    **defaults
        Default options of the solve (e.g. ``steps=2000``).

    Examples
    --------
    >>> from interpret_spectral.synthetic import planted_store
    >>> from interpret_spectral.spectral.decompose import decompose
    >>> result = decompose(planted_store(n_samples=1), n_components=3, progress=False,
    ...                    solver=BufferedAdamSolver(DiffusionSampling(accumulate=2), steps=20))
    >>> result.attrs["solver"]
    'adam-buffer'
    """

    name = "adam-buffer"

    def __init__(self, sampling: DiffusionSampling | None = None, **defaults: Any) -> None:
        self.sampling = sampling if sampling is not None else DiffusionSampling()
        if not isinstance(self.sampling, DiffusionSampling):
            raise TypeError(f"sampling must be a DiffusionSampling, got {type(sampling).__name__}")
        if "accumulate" in defaults:
            raise TypeError("set the accumulation with DiffusionSampling(accumulate=...)")
        self.defaults = dict(defaults)

    def solve(self, operator: Any, n_components: int, *, seed: int = 0, **options: Any) -> Solution:
        if "accumulate" in options:
            raise TypeError("set the accumulation with DiffusionSampling(accumulate=...)")
        merged = {**self.defaults, **options, "accumulate": self.sampling.accumulate}
        solution = super().solve(_BufferedOperator(operator, self.sampling), n_components, seed=seed, **merged)
        solution.options.update(buffer_size=self.sampling.buffer_size, refresh=float(self.sampling.refresh))
        return solution


register_solver(BufferedAdamSolver())

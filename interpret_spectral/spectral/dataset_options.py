"""Dataset-level options of the authors' code, as changes of the graphs' sources.

:func:`~interpret_spectral.spectral.decompose_dataset` builds one graph per site (and
timestep).  Two options of the authors' dataset-level code change which graphs there
are and how much each counts:

- :func:`weight_by_resolution`: every site's graph weighs in proportion to its number
  of tokens (a 64 x 64 site four times a 32 x 32 one) instead of equally;
- :func:`one_timestep_per_image`: for stores with a ``timestep`` dimension, every image
  uses one timestep drawn at random (the same for all its sites), instead of every
  timestep being a graph of every image.

(The third, a moving average of the maps over the Adam steps, is the Adam solver's
``moving_average`` option.)

Examples
--------
>>> from interpret_spectral.spectral.dataset_graphs import Source
>>> found = [Source("a", None, "a", (8, 8)), Source("b", None, "b", (4, 4))]
>>> [s.weight for s in weight_by_resolution(found)]
[1.6, 0.4]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from interpret_spectral.spectral.dataset_graphs import Source

__all__ = ["weight_by_resolution", "draw_timesteps", "one_timestep_per_image"]


def weight_by_resolution(found: Sequence[Source]) -> list[Source]:
    """The sources with weights proportional to their tokens (mean weight 1).

    Examples
    --------
    >>> [s.weight for s in weight_by_resolution([Source("a", None, "a", (2, 2))])]
    [1.0]
    """
    tokens = np.array([source.tokens for source in found], dtype=np.float64)
    weights = tokens / tokens.mean()
    return [dataclasses.replace(source, weight=float(w) * source.weight) for source, w in zip(found, weights)]


def draw_timesteps(n_samples: int, n_timesteps: int, seed: int) -> np.ndarray:
    """Which of ``n_timesteps`` chosen timesteps every sample uses: ``(n_samples,)`` indices, uniform.

    Examples
    --------
    >>> draw_timesteps(4, 3, seed=0).shape
    (4,)
    """
    return np.random.default_rng([int(seed), 0x7D]).integers(int(n_timesteps), size=int(n_samples))


def one_timestep_per_image(found: Sequence[Source], n_samples: int, seed: int) -> list[Source]:
    """One source per site whose tokens come, for every sample, from one timestep drawn at random.

    Parameters
    ----------
    found : sequence of Source
        Every chosen site at every chosen timestep (positions along the store's
        ``timestep`` dimension).
    n_samples : int
    seed : int
        Seeds the draw (:func:`draw_timesteps`: the same per image for every site).

    Raises
    ------
    ValueError
        When the sources have no timesteps.

    Examples
    --------
    >>> found = [Source("a", p, f"a@t={p}", (2, 2)) for p in (0, 1, 2)]
    >>> [s.label for s in one_timestep_per_image(found, n_samples=3, seed=0)]
    ['a@t=random per image']
    """
    if any(source.timestep is None for source in found):
        raise ValueError("random_timestep=True needs a store with a timestep dimension (e.g. from a diffusion model)")
    positions = sorted({int(source.timestep) for source in found})  # type: ignore[arg-type]
    chosen = np.asarray(positions)[draw_timesteps(n_samples, len(positions), seed)]
    sites: dict[str, Source] = {}
    for source in found:
        sites.setdefault(source.site, dataclasses.replace(
            source, timestep=None, label=f"{source.site}@t=random per image",
            per_sample=tuple(int(p) for p in chosen)))
    return list(sites.values())

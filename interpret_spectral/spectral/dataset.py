"""Dataset-level spectral decomposition: one set of eigenvector maps for every image.

Paper section 3.3 / 4.2 (Zhang, Yunis & Maire, CVPR 2024).  Every sample ``s`` gets
an ``X_s`` on one output grid; the graphs connect tokens within *and across*
images (:mod:`interpret_spectral.spectral.dataset_graphs`), so the components mean
the same thing in every image.  A Q-K graph (unit queries against unit keys) groups
tokens by where they are, the 'where' pathway; a V-V graph (unit values against unit
values) groups them by what they are, the 'what' pathway.  The objective is
``mean_l tr(X^T G_l^T P_l G_l X)`` with orthonormal ``X``.

The solver is any registered :class:`~interpret_spectral.spectral.Solver`, the same
objects :func:`~interpret_spectral.decompose` uses:

* ``solver="adam"`` is the paper's procedure and the authors' code: a table of
  softmax logits of ``X`` for every sample (the authors' per-image lookup table);
  each minibatch of samples gets its graphs (neighbours from the minibatch only)
  and ``steps_per_batch`` Adam steps on the one Eq. 4 loss
  (:mod:`interpret_spectral.spectral.eq4`).  The result is read from the logits
  themselves (the authors' code renders its final maps from an exponential moving
  average of them, decay 0.99; that is left out), orthogonalised (Eq. 8) over all
  tokens of all samples, then rotated within its span by a Rayleigh-Ritz step on
  the last epoch's minibatch graphs, which orders the components and gives their
  ``values``.  It can checkpoint its whole state and resume from it.
* ``solver="exact"`` goes beyond the paper: one sparse graph per site over all
  tokens of all samples (neighbours from the whole dataset), ``M = mean_l (N /
  n_l) G_l^T sym(P_l) G_l`` assembled as a sparse matrix, and its top eigenvectors
  by ARPACK; for datasets whose graph fits in memory.

The store is read one site at a time, in contiguous runs of samples, so memory
holds one site's unit features for all samples plus the pass's sparse graphs.  With
``client=`` (a ``distributed.Client``) the exact solver's brute-force neighbours are
computed in row blocks on the Dask cluster (:mod:`interpret_spectral.spectral.blocks`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from interpret_spectral.spectral.adam import CHECKPOINT_SUFFIXES
from interpret_spectral.spectral.blocks import check_client
from interpret_spectral.spectral.dataset_graphs import MinibatchOperator, Settings, full_operator, sources
from interpret_spectral.spectral.dataset_options import one_timestep_per_image
from interpret_spectral.spectral.dataset_options import weight_by_resolution as resolution_weights
from interpret_spectral.spectral.kinds import GraphKind, get_graph_kind
from interpret_spectral.spectral.limits import check_memory, check_upsampling
from interpret_spectral.spectral.resample import check_resample_method
from interpret_spectral.spectral.solvers import Solver, get_solver
from interpret_spectral.spectral.topk import NEIGHBOUR_METHODS, intra_inter_topk
from interpret_spectral.store.decomposition import make_decomposition
from interpret_spectral.store.reader import sample_ids
from interpret_spectral.store.selection import as_store

__all__ = ["decompose_dataset", "intra_inter_topk"]


def _grid_pair(grid: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        pair = (int(grid), int(grid))
    elif isinstance(grid, Sequence) and len(grid) == 2 and all(
        isinstance(g, (int, np.integer)) and not isinstance(g, bool) for g in grid
    ):
        pair = (int(grid[0]), int(grid[1]))
    else:
        raise TypeError(f"grid must be an int or a (height, width) pair of ints, got {grid!r}")
    if min(pair) < 1:
        raise ValueError(f"grid sides must be >= 1, got {pair}")
    return pair


def _check_positive(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _estimate_bytes(tree: xr.DataTree, found: Sequence[Any], kind: GraphKind, n_samples: int, n_out: int,
                    n_components: int, neighbours: int, minibatch: bool) -> int:
    """Memory of one site's features for all samples, the graphs and the maps, from the arrays' real shapes."""
    features = 0
    for source in found:
        site = 0.0
        for var in kind.variables:
            array = tree[source.site][var]
            site += float(np.prod(array.shape, dtype=np.float64)) * 4
            if source.timestep is not None:
                site /= array.sizes["timestep"]
        features = max(features, int(site))
    tokens = n_samples * max(s.tokens for s in found)
    graph_bytes = 3 * tokens * neighbours * 16 * (1 if minibatch else len(found))
    maps = n_samples * n_out * n_components * (16 if minibatch else 32)
    return 2 * features + graph_bytes + maps


def decompose_dataset(
    store: xr.DataTree | str | os.PathLike[str],
    graph: str | GraphKind = "vv",
    n_components: int = 50,
    intra: int = 10,
    inter: int = 10,
    threshold: float = 0.1,
    batch_size: int = 16,
    steps_per_batch: int = 5,
    epochs: int = 20,
    lr: float = 1e-2,
    layers: Any = None,
    grid: int | Sequence[int] = 32,
    solver: str | Solver = "adam",
    seed: int = 0,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: bool = True,
    *,
    resample: Literal["bilinear", "area"] = "bilinear",
    timesteps: Any = None,
    checkpoint_every: int | None = None,
    chunk_size: int | None = None,
    orthogonalize: str = "whiten",
    solver_options: Mapping[str, Any] | None = None,
    neighbours: str = "auto",
    weight_by_resolution: bool = False,
    random_timestep: bool = False,
    moving_average: float | None = None,
    allow_incomplete: bool = False,
    client: Any = None,
) -> xr.Dataset:
    """One set of eigenvector maps for every sample of a store, from cross-image graphs.

    Per site (heads concatenated, patch tokens only) every token is linked to its
    ``intra`` most similar tokens in its own image and its ``inter`` most similar
    tokens in other images (unit queries against unit keys for ``graph="qk"``, unit
    values against each other for ``graph="vv"``); similarities not above
    ``threshold`` are dropped, the graph is symmetrised and row-normalised.  The
    components maximise ``mean_l tr(X^T G_l^T P_l G_l X)`` over orthonormal ``X``
    on the output ``grid`` of every sample.  See the module docstring for the two
    solvers.

    Parameters
    ----------
    store : xarray.DataTree or path-like
        A store with ``q`` and ``k`` (``graph="qk"``) or ``v`` (``graph="vv"``); a
        path is opened lazily.  It is read one site at a time, never as a whole
        (see the module docstring for the memory this takes).
    graph : str or GraphKind
        ``"vv"``: value-value cosine graph (the 'what' pathway); ``"qk"``: unit
        queries against unit keys (the 'where' pathway); any registered graph kind
        (its :meth:`~interpret_spectral.spectral.GraphKind.dataset_features`), or a
        :class:`~interpret_spectral.spectral.GraphKind`.
    n_components : int
        Number of components.
    intra, inter : int
        Neighbours kept per token within its image and in other images (of the
        minibatch for ``adam``, of the dataset for ``exact``).
    threshold : float
        Cosine similarities ``<= threshold`` are dropped.
    batch_size : int
        Samples per minibatch (``adam``); the samples of an epoch are split into
        ``ceil(n_samples / batch_size)`` near-equal minibatches.
    steps_per_batch : int
        Adam steps per minibatch.
    epochs : int
        Passes over the samples (``adam``).
    lr : float
        Adam learning rate (the authors' 1e-2; the parameters are logits, as in
        their code).  With few epochs a larger rate and more steps per minibatch
        converge sooner: ``examples/what_where.py`` uses 0.1 and 25 steps.
    layers : None, int, str or sequence
        Sites to use, as for :func:`interpret_spectral.probe` (indices in forward
        order, names or glob patterns); all when None.
    grid : int or (int, int)
        Output grid ``(y, x)`` of every sample's maps.
    solver : str or Solver
        ``"adam"``: the paper's minibatch Adam solver; ``"exact"``: the sparse
        eigensolver on the full cross-image graph; any registered solver (one with
        ``minibatch = True`` gets the minibatch schedule, any other the full graph).
    seed : int
        Seed of the initial logits, of the minibatch order and of the eigensolver's
        start vector.
    checkpoint : path-like, optional
        ``.safetensors`` or ``.npz`` file (``adam`` only).  When it exists the run
        resumes from it (the settings must match; ``epochs`` may grow); the state is
        written atomically at the end of every epoch, every ``checkpoint_every``
        minibatches and at the end.
    progress : bool
        Show a tqdm progress bar.
    resample : {"bilinear", "area"}
        How the output grid is resampled to each site's grid.
    timesteps : scalar or sequence, optional
        For stores with a ``timestep`` dimension: the timesteps to use, as values
        of its coordinate (e.g. diffusion timesteps), as in
        :func:`interpret_spectral.decompose`; every site and timestep is one graph.
        All when None.
    checkpoint_every : int, optional
        Also save every this many minibatches.
    chunk_size : int, optional
        Query tokens per top-k chunk (see :func:`~interpret_spectral.spectral.topk.intra_inter_topk`).
    orthogonalize : {"whiten", "rotate"}
        ``adam``'s end: ``"whiten"`` (default here: orthonormal vectors over all tokens
        of all samples, Rayleigh-Ritz ordered) or Eq. 8 as the paper writes it (``X U``).
    solver_options : mapping, optional
        Further options of the solver (e.g. a plugin's).
    neighbours : {"auto", "exact", "approximate"}
        How cross-image neighbours are found (:func:`~interpret_spectral.spectral.topk.intra_inter_topk`):
        brute force, FAISS's approximate search (the ``scale`` extra), or approximate past
        :data:`~interpret_spectral.spectral.topk.EXACT_LIMIT` tokens per graph.
    weight_by_resolution : bool
        Weigh every site's graph by its number of tokens (the authors' code) instead
        of equally (:func:`~interpret_spectral.spectral.dataset_options.weight_by_resolution`).
    random_timestep : bool
        Stores with a ``timestep`` dimension: every image uses one timestep drawn at
        random (seeded by ``seed``; the same for all its sites), as the authors' code
        draws one per image, instead of every timestep being a graph
        (:func:`~interpret_spectral.spectral.dataset_options.one_timestep_per_image`).
    moving_average : float, optional
        ``adam`` only: the maps are read from an exponential moving average of the
        parameters over the Adam updates with this decay (the authors' 0.99) instead of
        the last ones.
    allow_incomplete : bool
        Decompose a store that holds fewer samples than its probe was asked for (by
        default refused, with how to resume).
    client : distributed.Client, optional
        Full-graph solvers (``exact``): build every site's brute-force neighbours in
        row blocks on this Dask cluster (:mod:`interpret_spectral.spectral.blocks`;
        the keys are sent once per site to every worker), with a result identical to
        the one-process search.  The approximate (FAISS) search, when ``neighbours``
        chooses it, and the eigensolver run in this process.  Not for minibatch
        solvers (``adam``), whose per-minibatch graphs are small.

    Returns
    -------
    xarray.Dataset
        In the one decomposition format (``producer="decompose_dataset"``).
        ``vectors (sample, y, x, component)``: orthonormal over all tokens of all
        samples (``sum over sample, y, x`` of ``vectors_i * vectors_j`` is
        ``delta_ij``), largest entry of each component positive; ``values
        (component)``, in decreasing order: eigenvalues of ``mean_l G_l^T sym(P_l)
        G_l`` (``exact``) or the Ritz values on the last epoch's minibatch graphs
        (``adam``).
        Attributes record the settings and the sites used.

    Raises
    ------
    ValueError
        For unknown options, too few tokens for ``n_components``, a store without
        the variables the graph needs, non-finite tokens (naming the site and the
        samples), or a checkpoint written with other settings.
    RuntimeError
        When ``client`` is closed or its cluster has no workers (before any work).
    MemoryError
        When the estimated memory exceeds what the machine has, before allocating.

    Examples
    --------
    >>> from interpret_spectral import open_store
    >>> store = open_store("camvid.h5")  # doctest: +SKIP
    >>> what = decompose_dataset(store, graph="vv", n_components=20, epochs=10)  # doctest: +SKIP
    >>> what["vectors"].dims  # doctest: +SKIP
    ('sample', 'y', 'x', 'component')
    """
    tree = as_store(store, allow_incomplete)
    kind = get_graph_kind(graph)
    solver_obj = get_solver(solver)
    check_resample_method(resample)
    n_components = _check_positive("n_components", n_components)
    intra = _check_positive("intra", intra, 0)
    inter = _check_positive("inter", inter, 0)
    if intra + inter < 1:
        raise ValueError("intra and inter are both 0: the graph would have no edges; keep at least one neighbour")
    batch_size = _check_positive("batch_size", batch_size)
    steps_per_batch = _check_positive("steps_per_batch", steps_per_batch)
    epochs = _check_positive("epochs", epochs)
    if checkpoint_every is not None:
        checkpoint_every = _check_positive("checkpoint_every", checkpoint_every)
    if not -1.0 <= float(threshold) < 1.0:
        raise ValueError(f"threshold is a cosine similarity and must lie in [-1, 1), got {threshold}")
    if not float(lr) > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    out_grid = _grid_pair(grid)
    checkpoint_path = None if checkpoint is None else Path(checkpoint)
    if checkpoint_path is not None:
        if not solver_obj.minibatch:
            raise ValueError(
                f"checkpoint= applies to solver='adam' only (minibatch solvers); the {solver_obj.name!r} solver "
                "has no state to resume"
            )
        if checkpoint_path.suffix not in CHECKPOINT_SUFFIXES:
            raise ValueError(f"checkpoint must end in {' or '.join(CHECKPOINT_SUFFIXES)}, got {checkpoint_path}")

    if client is not None:
        if solver_obj.minibatch:
            raise ValueError(
                f"client= applies to full-graph solvers (solver='exact'); the minibatch {solver_obj.name!r} solver "
                "builds small per-minibatch graphs in this process: pass client=None"
            )
        check_client(client)
    ids = sample_ids(tree)
    n_samples = len(ids)
    if n_samples < 1:
        raise ValueError("the store holds no samples")
    if inter > 0 and n_samples < 2:
        raise ValueError(f"inter={inter} links tokens across images, but the store holds one sample; pass inter=0")
    if solver_obj.minibatch and inter > 0 and batch_size < 2:
        raise ValueError(f"inter={inter} needs minibatches of at least 2 samples, got batch_size={batch_size}")
    found = sources(tree, kind, layers, timesteps)
    if random_timestep:
        found = one_timestep_per_image(found, n_samples, int(seed))
    if weight_by_resolution:
        found = resolution_weights(found)
    if moving_average is not None:
        if not solver_obj.minibatch:
            raise ValueError(f"moving_average applies to solver='adam' (minibatch solvers), not {solver_obj.name!r}")
        if not 0.0 <= float(moving_average) < 1.0:
            raise ValueError(f"moving_average is a decay in [0, 1), got {moving_average!r}")
    check_upsampling(out_grid, (max(s.grid[0] for s in found), max(s.grid[1] for s in found)))
    n_out = out_grid[0] * out_grid[1]
    if n_components >= n_samples * n_out:
        raise ValueError(
            f"n_components={n_components} must be below the number of output tokens {n_samples * n_out} "
            f"({n_samples} samples x grid {out_grid}); use fewer components or a larger grid"
        )
    check_memory(
        _estimate_bytes(tree, found, kind, n_samples, n_out, n_components, intra + inter, solver_obj.minibatch),
        f"decompose_dataset ({n_samples} samples, {len(found)} graphs, output grid {out_grid})",
        "use fewer samples (a smaller store), fewer sites (layers=), fewer neighbours (intra=, inter=) "
        "or a coarser grid=",
    )
    if neighbours not in NEIGHBOUR_METHODS:
        raise ValueError(f"neighbours must be one of {NEIGHBOUR_METHODS}, got {neighbours!r}")
    settings = Settings(kind, intra, inter, float(threshold), out_grid, resample, chunk_size, neighbours=neighbours,
                        client=client)
    started = time.perf_counter()
    options = dict(solver_options or {})
    if solver_obj.minibatch:
        config = {
            "graph": kind.name, "n_components": n_components, "intra": intra, "inter": inter,
            "threshold": float(threshold), "batch_size": batch_size, "steps_per_batch": steps_per_batch,
            "epochs": epochs, "lr": float(lr), "sources": [s.label for s in found], "grid": list(out_grid),
            "resample": resample, "seed": int(seed),
            "samples_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        }
        operator: Any = MinibatchOperator(tree, found, n_samples, settings, batch_size=batch_size,
                                          steps_per_batch=steps_per_batch, epochs=epochs)
        if moving_average is not None:
            options["moving_average"] = float(moving_average)
        options = {"lr": float(lr), "orthogonalize": orthogonalize, "checkpoint": checkpoint_path,
                   "checkpoint_every": checkpoint_every, "config": config, "progress": progress, **options}
    else:
        operator = full_operator(tree, found, n_samples, settings, progress=progress)
    solution = solver_obj.solve(operator, n_components, seed=int(seed), **options)
    attrs: dict[str, Any] = {
        "graph": kind.name, "solver": solver_obj.name, "method": solution.method, "n_components": n_components,
        "intra": intra, "inter": inter, "threshold": float(threshold), "grid_h": out_grid[0],
        "grid_w": out_grid[1], "resample": resample, "sites": json.dumps([s.label for s in found]),
        "seed": int(seed), "seconds": round(time.perf_counter() - started, 3),
        "weight_by_resolution": int(bool(weight_by_resolution)), "random_timestep": int(bool(random_timestep)),
    }
    if moving_average is not None:
        attrs["moving_average"] = float(moving_average)
    if solver_obj.minibatch:
        attrs.update(batch_size=batch_size, steps_per_batch=steps_per_batch, epochs=epochs, lr=float(lr),
                     orthogonalize=orthogonalize)
    vectors = np.asarray(solution.vectors, dtype=np.float32).reshape(n_samples, *out_grid, n_components)
    return make_decomposition(vectors, np.asarray(solution.values, dtype=np.float64), ids,
                              producer="decompose_dataset", attrs=attrs)

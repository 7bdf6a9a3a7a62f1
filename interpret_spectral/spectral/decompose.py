"""Per-sample layer-distributed spectral decomposition of a store: :func:`decompose`.

For every sample of a store, the graphs of the chosen sites (of a graph kind,
:mod:`interpret_spectral.spectral.kinds`) define

.. math::

    M = \\sum_g \\hat w_g (N / n_g) G_g^T \\mathrm{sym}(P_g) G_g

on the output grid (:mod:`interpret_spectral.spectral.operator`), and the
decomposition is the top ``n_components`` eigenvectors of ``M``, computed by a solver
(:mod:`interpret_spectral.spectral.solvers`: ``"exact"``, or the paper's gradient
solver ``"adam"``).  Samples are read from the store one at a time, so an on-disk
store is never loaded whole.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from interpret_spectral.spectral.kinds import GraphKind, get_graph_kind
from interpret_spectral.spectral.limits import check_memory, check_upsampling
from interpret_spectral.spectral.operator import LayerDistributedOperator
from interpret_spectral.spectral.resample import as_grid, check_resample_method
from interpret_spectral.spectral.site_graphs import HEAD_MODES, NonFiniteError, SiteGraphs
from interpret_spectral.spectral.solvers import Solver, get_solver
from interpret_spectral.store.decomposition import DECOMPOSITION_FORMAT, make_decomposition, validate_decomposition
from interpret_spectral.store.format import all_finite
from interpret_spectral.store.reader import patch_tokens, sample_ids
from interpret_spectral.store.selection import (
    as_store, select_layers, select_samples, select_timesteps, site_grid, site_heads,
)

__all__ = ["DECOMPOSITION_FORMAT", "CONTRIBUTION_CACHE_BYTES", "decompose", "site_contributions", "sample_operator"]

_OBJECTIVE = (
    "max tr(X^T M X) s.t. X^T X = I, M = sum_g w_g (N/n_g) G_g^T sym(P_g) G_g, "
    "w normalised to sum 1, G_g the resampling from the output grid (N tokens) to the site grid (n_g tokens)"
)
_PRECISIONS = {"float32": torch.float32, "float64": torch.float64}
_CHUNK_BYTES = 32 * 2**20


def _site_weights(weights: Any, names: Sequence[str]) -> dict[str, Any]:
    """Per selected site: None (weight 1), a number, or a sequence of per-head numbers."""
    if weights is None:
        return {name: None for name in names}
    if isinstance(weights, Mapping):
        unknown = set(weights) - set(names)
        if unknown:
            raise KeyError(f"weights name sites that are not chosen: {sorted(unknown)}; chosen: {list(names)}")
        return {name: weights.get(name, 1.0) for name in names}
    array = np.asarray(weights, dtype=np.float64)
    if array.shape != (len(names),):
        raise ValueError(
            f"weights must be a mapping site -> weight or an array of one weight per chosen site "
            f"({len(names)}), got shape {array.shape}"
        )
    return {name: float(w) for name, w in zip(names, array)}


def _output_grid(store: xr.DataTree, names: Sequence[str], grid: Any) -> tuple[int, int]:
    """The output grid (default: the finest chosen site's), refused when absurdly finer than the sites."""
    grids = [site_grid(store, name) for name in names]
    if grid is None:
        return max(grids, key=lambda g: g[0] * g[1])
    out = as_grid(grid, "grid")
    check_upsampling(out, (max(g[0] for g in grids), max(g[1] for g in grids)))
    return out


#: Bytes of graphs kept in memory per sample by ``decompose(..., return_contributions=True)``.
CONTRIBUTION_CACHE_BYTES = 1 << 30


def sample_operator(
    store: xr.DataTree,
    sample: int,
    *,
    graph: str | GraphKind = "qk",
    layers: Any = None,
    heads: str = "each",
    timesteps: Any = None,
    resample: str = "bilinear",
    grid: tuple[int, int] | int | None = None,
    weights: Any = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> LayerDistributedOperator:
    """The operator ``M`` of one sample of a store (reads only that sample).

    Parameters are those of :func:`decompose`; ``sample`` is a position in the store and
    ``dtype`` the torch dtype of the attention computation (``precision``).

    Returns
    -------
    LayerDistributedOperator

    Raises
    ------
    NonFiniteError
        When a site's tokens for this sample hold NaN or infinity (naming both).

    Examples
    --------
    >>> from interpret_spectral.synthetic import planted_store
    >>> op = sample_operator(planted_store(n_samples=1), 0)
    >>> op.out_grid, op.num_graphs
    ((8, 8), 4)
    """
    kind = get_graph_kind(graph)
    names = select_layers(store, layers)
    positions, _ = select_timesteps(store, names, timesteps)
    out_grid = _output_grid(store, names, grid)
    site_weights = _site_weights(weights, names)
    sample_id = sample_ids(store)[sample]
    graphs = []
    for name in names:
        node = store[name]
        missing = [var for var in kind.variables if var not in node.data_vars]
        if missing:
            raise KeyError(
                f"site {name!r} holds no {missing}; the {kind.name!r} graph needs {list(kind.variables)} "
                f"(probe with capture=('q', 'k', 'v'))"
            )
        arrays = {var: patch_tokens(store, name, var, samples=sample, timesteps=positions) for var in kind.variables}
        for var, array in arrays.items():
            if not all_finite(array):
                raise NonFiniteError(
                    f"{var} of site {name!r} holds NaN or infinity for sample {sample_id!r}: the model produced "
                    "non-finite attention for it; re-probe it (check the input and the precision), leave the "
                    "sample out (samples=) or the site (layers=)"
                )
        steps = [None] if positions is None else list(range(len(positions)))
        for index, step in enumerate(steps):
            tokens = {var: (value if step is None else value[index]) for var, value in arrays.items()}
            graphs.append(
                SiteGraphs.from_tokens(
                    kind, grid=site_grid(store, name), scale=float(node.attrs["scale"]), heads=heads,
                    weights=site_weights[name], name=name, timestep=step, dtype=dtype, device=device, tokens=tokens,
                )
            )
    return LayerDistributedOperator(graphs, out_grid, resample)


def _sample_bytes(store: xr.DataTree, names: Sequence[str], kind: GraphKind, itemsize: int) -> int:
    """Bytes of one sample's tokens of the chosen sites, from the arrays' real shapes (not attributes)."""
    total = 0
    for name in names:
        for var in kind.variables:
            shape = store[name][var].shape[1:]
            total += int(np.prod(shape, dtype=np.float64)) * (4 + itemsize)
    return total + _CHUNK_BYTES


def _json(value: Any) -> str:
    return json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


def decompose(
    store: xr.DataTree | str | os.PathLike[str],
    graph: str | GraphKind = "qk",
    n_components: int = 10,
    solver: str | Solver = "exact",
    layers: Any = None,
    heads: str = "each",
    timesteps: Any = None,
    resample: str = "bilinear",
    grid: tuple[int, int] | int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    weights: Any = None,
    samples: Any = None,
    allow_incomplete: bool = False,
    return_contributions: bool = False,
    **solver_options: Any,
) -> xr.Dataset | tuple[xr.Dataset, xr.Dataset]:
    """Layer-distributed spectral decomposition of every sample of a store.

    Parameters
    ----------
    store : xarray.DataTree or path-like
        A store (see :func:`interpret_spectral.probe`), or the path of its file.
    graph : str or GraphKind
        ``"qk"``: Q-K attention graphs (the "where" pathway); ``"vv"``: V-V cosine
        graphs ("what"); any name of :func:`~interpret_spectral.spectral.available_graph_kinds`,
        or a :class:`~interpret_spectral.spectral.GraphKind` (or a factory of one).
    n_components : int
        Number of eigenvectors.
    solver : str or Solver
        ``"exact"``: top eigenvectors of ``M``; ``"adam"``: the paper's Eq. 4 by Adam;
        any name of :func:`~interpret_spectral.spectral.available_solvers`, or a
        :class:`~interpret_spectral.spectral.Solver` (or a factory of one).
    layers : None, int, str or sequence
        Sites to use, by forward index, name or glob (see :func:`select_layers`).
    heads : {"each", "concat"}
        One graph per head, or one per site of the concatenated heads.
    timesteps : None, value or sequence of values
        Timestep coordinates to use (stores with a ``timestep`` dimension); all when
        None.  ``"exact"`` averages over all of them, ``"adam"`` draws one per step.
    resample : {"bilinear", "area"}
        Resampling from the output grid to each site's grid (paper / authors' code).
    grid : (int, int) or int, optional
        Output grid; default the finest grid of the chosen sites.
    seed : int
        Seeds the solver (the same for every sample).
    device : str or torch.device, optional
        Torch device of the graph computations and of Adam.
    progress : bool
        Show a tqdm bar over samples.
    weights : mapping or sequence, optional
        Graph weights: a mapping site name -> weight (a number, or one per head with
        ``heads="each"``), or one number per chosen site.  Every (site, head,
        timestep) graph weighs 1 by default; weights are normalised to sum to one.
    samples : id, position or sequence of them, optional
        Decompose only these samples (default all).
    allow_incomplete : bool
        Decompose a store that holds fewer samples than its probe was asked for (by
        default refused, with how to resume).
    return_contributions : bool
        Also return :func:`site_contributions` of the result (for the sites decomposed),
        computed from the same graphs: every graph's ``P`` is kept in memory while its
        sample is solved (up to :data:`CONTRIBUTION_CACHE_BYTES`; the rest is
        recomputed), so the attention is computed once instead of twice.  Results are
        bitwise those of :func:`decompose` and :func:`site_contributions` apart.
    **solver_options
        Options of the solver (:func:`~interpret_spectral.spectral.solvers.solve_exact`:
        ``method``, ``tol``, ``maxiter``, ``dense_threshold``, ``max_dense_bytes``;
        :func:`~interpret_spectral.spectral.adam.solve_adam`: ``steps``, ``lr``,
        ``parametrization``, ``ortho_weight``, ``accumulate``, ``init``,
        ``orthogonalize``, ``cache_bytes``, ``exact_options``), and ``precision``: the dtype in which
        attention rows are computed, ``"float32"`` (default: the store's own
        precision; ``M`` is still summed and solved in float64, and on DINOv2-S/14 at
        448 px its top-10 subspace is 3e-7 rad from the float64 one) or ``"float64"``.

    Returns
    -------
    xarray.Dataset or (xarray.Dataset, xarray.Dataset)
        With ``return_contributions``: the decomposition and its site contributions.
        The decomposition is in the one decomposition format (:func:`~interpret_spectral.store.decomposition.make_decomposition`,
        ``producer="decompose"``).
        ``vectors (sample, y, x, component)``: orthonormal columns over the tokens of
        the output grid, the top eigenvectors of ``M`` (``"adam"``: Eq. 8 of its
        solution, orthogonal columns; see its ``orthogonalize`` option), sign-fixed; ``values (sample, component)``:
        their Rayleigh quotients under ``M``, descending; ``objective (sample)``
        (``tr X^T M X``), ``loss (sample)`` (final Eq. 4 loss, NaN for ``"exact"``),
        ``iterations (sample)``, ``seconds (sample)`` (graph construction and solve;
        not the read from the store).  Attributes record every choice (JSON text for
        lists and mappings).

    Raises
    ------
    ValueError
        Unknown choices; a grid more than 16x finer than the finest chosen site;
        non-finite attention (naming the site and the sample).
    MemoryError
        When the estimated memory exceeds what the machine has, before allocating.

    Examples
    --------
    >>> from interpret_spectral.synthetic import planted_store
    >>> result = decompose(planted_store(n_samples=1), n_components=3, progress=False)
    >>> result["vectors"].dims
    ('sample', 'y', 'x', 'component')
    >>> result.attrs["solver"], result.attrs["n_graphs"]
    ('exact', 4)
    """
    from tqdm.auto import tqdm

    tree = as_store(store, allow_incomplete)
    kind = get_graph_kind(graph)
    solver_obj = get_solver(solver)
    if heads not in HEAD_MODES:
        raise ValueError(f"heads must be one of {HEAD_MODES}, got {heads!r}")
    check_resample_method(resample)
    names = select_layers(tree, layers)
    _, timestep_values = select_timesteps(tree, names, timesteps)
    out_grid = _output_grid(tree, names, grid)
    options = dict(solver_options)
    precision = options.pop("precision", "float32")
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(_PRECISIONS)}, got {precision!r}")
    if not isinstance(n_components, (int, np.integer)) or isinstance(n_components, bool) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    positions = select_samples(tree, samples)
    all_ids = sample_ids(tree)
    ids = [all_ids[p] for p in positions]
    n = len(positions)
    h, w = out_grid
    size, c = h * w, int(n_components)
    itemsize = torch.finfo(_PRECISIONS[precision]).bits // 8
    estimate = (8 * n * size * c + solver_obj.memory_bytes(size, c, **options)
                + _sample_bytes(tree, names, kind, itemsize))
    if return_contributions:  # the graphs kept for the contributions
        estimate += min(CONTRIBUTION_CACHE_BYTES, sum(
            itemsize * (1 if heads == "concat" else site_heads(tree, name)) * int(np.prod(site_grid(tree, name))) ** 2
            for name in names))
    check_memory(estimate, f"decompose ({n} samples, output grid {out_grid}, {c} components, solver "
                 f"{solver_obj.name!r})", "pass a coarser grid=, fewer samples= or layers=, or solver options "
                 "that need less memory (method='lobpcg' never forms M)")
    vectors = np.zeros((n, h, w, c))
    values = np.zeros((n, c))
    columns = {key: np.zeros(n) for key in ("objective", "loss", "seconds")}
    iterations = np.zeros(n, dtype=np.int64)
    contributions = _contribution_array(tree, names, heads, timestep_values, n, c) if return_contributions else None
    resolved: dict[str, Any] = {}
    methods: set[str] = set()
    n_graphs = 0
    for row, position in enumerate(tqdm(positions, desc="decompose", unit="sample", disable=not progress)):
        operator = sample_operator(
            tree, position, graph=kind, layers=names, heads=heads, timesteps=timestep_values,
            resample=resample, grid=out_grid, weights=weights, dtype=_PRECISIONS[precision], device=device,
        )
        start = time.perf_counter()
        kept = operator.keep_rows(CONTRIBUTION_CACHE_BYTES) if return_contributions else []
        try:
            try:
                solution = solver_obj.solve(operator, c, seed=seed, **options)
            except TypeError as error:
                raise TypeError(
                    f"{error}; see the docstring of decompose for the options of solver={solver_obj.name!r}"
                ) from error
            if return_contributions:
                _fill_contributions(contributions, row, operator, solution.vectors, names)
        finally:
            operator.drop_rows(kept)
        seconds = time.perf_counter() - start
        vectors[row] = solution.vectors.reshape(h, w, -1)
        values[row] = solution.values
        columns["objective"][row] = solution.objective
        columns["loss"][row] = solution.loss
        columns["seconds"][row] = seconds
        iterations[row] = solution.iterations
        resolved = solution.options
        methods.add(solution.method)
        n_graphs = operator.num_graphs
    root = tree.attrs
    attrs = {
        "graph": kind.name,
        "solver": solver_obj.name,
        "method": ",".join(sorted(methods)),
        "layers": _json(names),
        "heads": heads,
        "timesteps": _json(timestep_values),
        "resample": resample,
        "grid": np.asarray(out_grid, dtype=np.int64),
        "n_components": c,
        "n_graphs": int(n_graphs),
        "seed": int(seed),
        "precision": precision,
        "weights": _json(None if weights is None else _site_weights(weights, names)),
        "solver_options": _json(resolved),
        "objective": _OBJECTIVE,
        "store_model": str(root.get("model", "")),
        "store_adapter": str(root.get("adapter", "")),
    }
    per_sample = {"objective": columns["objective"], "loss": columns["loss"], "iterations": iterations,
                  "seconds": columns["seconds"]}
    result = make_decomposition(vectors, values, ids, producer="decompose", attrs=attrs, per_sample=per_sample)
    if not return_contributions:
        return result
    return result, _contribution_dataset(contributions, result, names, set(names), kind, heads, resample,
                                         timestep_values)


def _contribution_array(tree: xr.DataTree, names: Sequence[str], heads: str, timestep_values: Any,
                        n_samples: int, n_components: int) -> np.ndarray:
    """NaN-filled ``(sample, site, timestep, head, component)`` for the contributions, memory checked."""
    width = max(1 if heads == "concat" else site_heads(tree, name) for name in names)
    n_steps = 1 if timestep_values is None else len(timestep_values)
    check_memory(8 * n_samples * len(names) * n_steps * width * n_components,
                 f"site_contributions ({n_samples} samples x {len(names)} sites x {width} heads)",
                 "pass fewer sites (layers=) or a decomposition of fewer samples")
    return np.full((n_samples, len(names), n_steps, width, n_components), np.nan)


def _fill_contributions(out: np.ndarray, row: int, operator: LayerDistributedOperator, vectors: np.ndarray,
                        names: Sequence[str]) -> None:
    """Every graph's Rayleigh quotients of the (unit-normalised) ``vectors`` into ``out[row]``."""
    x = np.asarray(vectors, dtype=np.float64).reshape(operator.size, -1)
    x = x / np.maximum(np.linalg.norm(x, axis=0), np.finfo(np.float64).tiny)  # unit columns (Eq. 8 rotated)
    for site_graphs, quotients in zip(operator.graphs, operator.rayleigh_quotients(x)):
        step = 0 if site_graphs.timestep is None else site_graphs.timestep
        out[row, names.index(site_graphs.name), step, : site_graphs.num_graphs] = quotients.cpu().numpy()


def _contribution_dataset(out: np.ndarray, decomposition: xr.Dataset, names: Sequence[str], used: set[str],
                          kind: GraphKind, heads: str, resample: str, timestep_values: Any) -> xr.Dataset:
    dims: tuple[str, ...] = ("sample", "site", "timestep", "head", "component")
    data = out
    coords: dict[str, Any] = {
        "sample": decomposition["sample"].values,
        "site": np.asarray(names, dtype=str),
        "component": decomposition["component"].values,
    }
    if timestep_values is None:
        dims = ("sample", "site", "head", "component")
        data = out[:, :, 0]
    else:
        coords["timestep"] = np.asarray(timestep_values)
    return xr.Dataset(
        {
            "contribution": (dims, data),
            "used": ("site", np.asarray([name in used for name in names])),
        },
        coords=coords,
        attrs={"graph": kind.name, "heads": heads, "resample": resample},
    )


def site_contributions(
    store: xr.DataTree | str | os.PathLike[str],
    decomposition: xr.Dataset,
    layers: Any = None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> xr.Dataset:
    """How well every graph agrees with a decomposition: its Rayleigh quotient per component.

    For graph ``g`` (site, head[, timestep]) and component ``c`` the contribution is
    ``(N / n_g) x_c^T G_g^T sym(P_g) G_g x_c``; the weighted mean over the graphs the
    decomposition used is its ``values`` entry.  Graph, heads, resampling, grid and
    timesteps are read from ``decomposition``'s attributes; ``layers`` may name other
    sites of the store than the decomposition used (default: every site).

    Parameters
    ----------
    store : xarray.DataTree or path-like
        The store the decomposition came from.
    decomposition : xarray.Dataset
        A result of :func:`decompose` (its graph kind must be registered).
    layers : None, int, str or sequence
        Sites to score (see :func:`select_layers`).
    progress : bool
        Show a tqdm bar over samples.
    device : str or torch.device, optional
        Torch device of the graph computations.

    Returns
    -------
    xarray.Dataset
        ``contribution (sample, site, [timestep,] head, component)`` (NaN where a site
        has fewer heads than the widest one; ``head`` has length 1 with
        ``heads="concat"``) and ``used (site)``, whether the decomposition used the site.

    Examples
    --------
    >>> from interpret_spectral.synthetic import planted_store
    >>> store = planted_store(n_samples=1)
    >>> result = decompose(store, n_components=3, progress=False)
    >>> site_contributions(store, result)["contribution"].dims
    ('sample', 'site', 'head', 'component')
    """
    from tqdm.auto import tqdm

    validate_decomposition(decomposition)
    if decomposition.attrs.get("producer") != "decompose":
        raise ValueError(
            "decomposition must be a result of interpret_spectral.decompose (its producer is "
            f"{decomposition.attrs.get('producer')!r}): contributions need its per-image graphs"
        )
    tree = as_store(store)
    names = select_layers(tree, layers)
    attrs = decomposition.attrs
    kind = get_graph_kind(attrs["graph"])
    heads, resample = attrs["heads"], attrs["resample"]
    timestep_values = json.loads(attrs["timesteps"])
    used = set(json.loads(attrs["layers"]))
    out_grid = tuple(int(v) for v in np.asarray(attrs["grid"]).ravel())
    ids = sample_ids(tree)
    missing = [sid for sid in decomposition["sample"].values.tolist() if sid not in ids]
    if missing:
        raise KeyError(f"samples {missing[:3]} of the decomposition are not in the store; pass the store it came from")
    n_samples = decomposition.sizes["sample"]
    n_components = decomposition.sizes["component"]
    out = _contribution_array(tree, names, heads, timestep_values, n_samples, n_components)
    for row, sid in enumerate(tqdm(decomposition["sample"].values.tolist(), desc="contributions",
                                   unit="sample", disable=not progress)):
        operator = sample_operator(
            tree, ids.index(sid), graph=kind, layers=names, heads=heads, timesteps=timestep_values,
            resample=resample, grid=out_grid, device=device, dtype=_PRECISIONS[attrs.get("precision", "float32")],
        )
        _fill_contributions(out, row, operator, decomposition["vectors"].isel(sample=row).values, names)
    return _contribution_dataset(out, decomposition, names, used, kind, heads, resample, timestep_values)

"""Per-sample layer-distributed spectral decomposition of a store: :func:`decompose`.

For every sample of a store, the graphs of the chosen sites (``DESIGN.md``,
"Spectral analysis"; :mod:`interpret_spectral.graphs`) define

.. math::

    M = \\sum_g \\hat w_g (N / n_g) G_g^T \\mathrm{sym}(P_g) G_g

on the output grid, and the decomposition is the top ``n_components``
eigenvectors of ``M`` (:mod:`interpret_spectral.solvers`: ``"exact"``, or the paper's
gradient solver ``"adam"``).  Samples are read from the store one at a time, so an
on-disk store is never loaded whole.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from interpret_spectral.spectral.graphs import GRAPHS, HEAD_MODES, RESAMPLE_METHODS, LayerDistributedOperator, SiteGraphs
from interpret_spectral.spectral.solvers import SOLVERS, solve
from interpret_spectral.store.reader import open_store, patch_tokens, sample_ids, site_names
from interpret_spectral.store.format import validate_store

__all__ = [
    "DECOMPOSITION_FORMAT",
    "decompose",
    "site_contributions",
    "select_layers",
    "sample_operator",
]

#: ``format`` attribute of the datasets :func:`decompose` returns.
DECOMPOSITION_FORMAT = "interpret_spectral.decomposition"

_OBJECTIVE = (
    "max tr(X^T M X) s.t. X^T X = I, M = sum_g w_g (N/n_g) G_g^T sym(P_g) G_g, "
    "w normalised to sum 1, G_g the resampling from the output grid (N tokens) to the site grid (n_g tokens)"
)
_PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


def _open(store: xr.DataTree | str | os.PathLike[str]) -> xr.DataTree:
    if isinstance(store, (str, os.PathLike)):
        return open_store(store)
    if not isinstance(store, xr.DataTree):
        raise TypeError(f"store must be an xarray.DataTree or a path to a store file, got {type(store).__name__}")
    validate_store(store)
    return store


def select_layers(store: xr.DataTree, layers: Any = None) -> list[str]:
    """Names of the store's sites picked by forward index, name or glob pattern.

    Parameters
    ----------
    store : xarray.DataTree
        A store.
    layers : None, int, str or sequence of int / str
        ``None`` keeps every site; ints index the forward order (negative from the
        end); strings are site names or glob patterns such as ``"blocks.1*"``.

    Returns
    -------
    list of str
        The chosen site names, in forward order.

    Examples
    --------
    >>> from interpret_spectral.synthetic import planted_store
    >>> select_layers(planted_store(n_samples=1, grids=((4, 4), (2, 2))), -1)
    ['blocks.1.attn']
    """
    names = site_names(store)
    if layers is None:
        return names
    if isinstance(layers, (int, np.integer, str)):
        layers = [layers]
    if not isinstance(layers, Sequence) or len(layers) == 0:
        raise ValueError(f"layers must be None, an int, a string or a non-empty sequence of them, got {layers!r}")
    chosen: set[str] = set()
    for selector in layers:
        if isinstance(selector, (int, np.integer)) and not isinstance(selector, bool):
            if not -len(names) <= selector < len(names):
                raise IndexError(f"layer index {selector} is out of range for the store's {len(names)} sites")
            chosen.add(names[selector])
        elif isinstance(selector, str):
            matched = [name for name in names if fnmatch.fnmatchcase(name, selector)]
            if not matched:
                raise KeyError(f"no site of the store matches {selector!r}; its sites are: {', '.join(names)}")
            chosen.update(matched)
        else:
            raise TypeError(f"layers must hold ints or strings, got {type(selector).__name__}")
    return [name for name in names if name in chosen]


def _grid_of(store: xr.DataTree, name: str) -> tuple[int, int]:
    attrs = store[name].attrs
    return int(attrs["grid_h"]), int(attrs["grid_w"])


def _timesteps(store: xr.DataTree, names: Sequence[str], timesteps: Any) -> tuple[list[int] | None, list[Any] | None]:
    """Positions and coordinate values of the chosen timesteps (None, None without a timestep dim)."""
    with_dim = ["timestep" in store[name].dims for name in names]
    if not any(with_dim):
        if timesteps is not None:
            raise ValueError("the store has no timestep dimension; pass timesteps=None")
        return None, None
    if not all(with_dim):
        raise ValueError("some chosen sites have a timestep dimension and others do not; choose sites of one kind")
    coordinate = store["timestep"].values if "timestep" in store.coords else np.arange(store.sizes["timestep"])
    values = list(coordinate.tolist())
    if timesteps is None:
        return list(range(len(values))), values
    wanted = [timesteps] if np.isscalar(timesteps) else list(timesteps)
    if not wanted:
        raise ValueError("timesteps must not be empty; pass None for every recorded timestep")
    positions = []
    for value in wanted:
        if value not in values:
            raise KeyError(f"timestep {value!r} is not in the store; it recorded {values}")
        positions.append(values.index(value))
    return positions, [values[p] for p in positions]


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


def sample_operator(
    store: xr.DataTree,
    sample: int,
    *,
    graph: str = "qk",
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

    Examples
    --------
    >>> from interpret_spectral.synthetic import planted_store
    >>> op = sample_operator(planted_store(n_samples=1), 0)
    >>> op.out_grid, op.num_graphs
    ((8, 8), 4)
    """
    names = select_layers(store, layers)
    positions, _ = _timesteps(store, names, timesteps)
    out_grid = _output_grid(store, names, grid)
    site_weights = _site_weights(weights, names)
    variables = ("q", "k") if graph == "qk" else ("v",)
    graphs = []
    for name in names:
        node = store[name]
        missing = [var for var in variables if var not in node.data_vars]
        if missing:
            raise KeyError(
                f"site {name!r} holds no {missing}; the {graph!r} graph needs {list(variables)} "
                f"(probe with capture=('q', 'k', 'v'))"
            )
        arrays = {var: patch_tokens(store, name, var, samples=sample, timesteps=positions) for var in variables}
        steps = [None] if positions is None else list(range(len(positions)))
        for index, step in enumerate(steps):
            tokens = {var: (value if step is None else value[index]) for var, value in arrays.items()}
            graphs.append(
                SiteGraphs.from_tokens(
                    graph, grid=_grid_of(store, name), scale=float(node.attrs["scale"]), heads=heads,
                    weights=site_weights[name], name=name, timestep=step, dtype=dtype, device=device, **tokens,
                )
            )
    return LayerDistributedOperator(graphs, out_grid, resample)


def _output_grid(store: xr.DataTree, names: Sequence[str], grid: Any) -> tuple[int, int]:
    if grid is not None:
        if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
            grid = (int(grid), int(grid))
        try:
            h, w = (int(v) for v in grid)
        except (TypeError, ValueError):
            raise TypeError(f"grid must be an int or a (height, width) pair, got {grid!r}") from None
        if h < 1 or w < 1:
            raise ValueError(f"grid must be positive, got {(h, w)}")
        return h, w
    grids = [_grid_of(store, name) for name in names]
    return max(grids, key=lambda g: g[0] * g[1])


def _check_choices(graph: str, solver: str, heads: str, resample: str) -> None:
    for what, value, allowed in (("graph", graph, GRAPHS), ("solver", solver, SOLVERS),
                                 ("heads", heads, HEAD_MODES), ("resample", resample, RESAMPLE_METHODS)):
        if value not in allowed:
            raise ValueError(f"{what} must be one of {allowed}, got {value!r}")


def _sample_positions(store: xr.DataTree, samples: Any) -> list[int]:
    ids = sample_ids(store)
    if samples is None:
        return list(range(len(ids)))
    if isinstance(samples, (str, int, np.integer)):
        samples = [samples]
    positions = []
    for item in samples:
        if isinstance(item, str):
            if item not in ids:
                raise KeyError(f"sample {item!r} is not in the store (it holds {len(ids)} samples, e.g. {ids[:3]})")
            positions.append(ids.index(item))
        elif isinstance(item, (int, np.integer)) and -len(ids) <= item < len(ids):
            positions.append(int(item) % len(ids))
        else:
            raise IndexError(f"sample {item!r} is neither an id nor a position of the store's {len(ids)} samples")
    return positions


def _json(value: Any) -> str:
    return json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


def decompose(
    store: xr.DataTree | str | os.PathLike[str],
    graph: str = "qk",
    n_components: int = 10,
    solver: str = "exact",
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
    **solver_options: Any,
) -> xr.Dataset:
    """Layer-distributed spectral decomposition of every sample of a store.

    Parameters
    ----------
    store : xarray.DataTree or path-like
        A store (see :func:`interpret_spectral.probe`), or the path of its file.
    graph : {"qk", "vv"}
        Q-K attention graphs (the "where" pathway) or V-V cosine graphs ("what").
    n_components : int
        Number of eigenvectors.
    solver : {"exact", "adam"}
        Top eigenvectors of ``M`` computed exactly, or the paper's Eq. 4 by Adam.
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
    **solver_options
        Options of the solver (:func:`interpret_spectral.solvers.solve_exact`:
        ``method``, ``tol``, ``maxiter``, ``dense_threshold``, ``max_dense_bytes``;
        :func:`interpret_spectral.solvers.solve_adam`: ``steps``, ``lr``,
        ``parametrization``, ``ortho_weight``, ``accumulate``, ``init``,
        ``cache_bytes``, ``exact_options``), and ``precision``: the dtype in which
        attention rows are computed, ``"float32"`` (default: the store's own
        precision; ``M`` is still summed and solved in float64, and on DINOv2-S/14 at
        448 px its top-10 subspace is 3e-7 rad from the float64 one) or ``"float64"``.

    Returns
    -------
    xarray.Dataset
        ``vectors (sample, y, x, component)``: orthonormal columns over the tokens of
        the output grid, the top eigenvectors of ``M`` (or their best approximation in
        the span of the Adam solution), sign-fixed; ``values (sample, component)``:
        their Rayleigh quotients under ``M``, descending; ``objective (sample)``
        (``tr X^T M X``), ``loss (sample)`` (final Eq. 4 loss, NaN for ``"exact"``),
        ``iterations (sample)``, ``seconds (sample)`` (graph construction and solve;
        not the read from the store).  Attributes record every choice (JSON text for
        lists and mappings).

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

    tree = _open(store)
    _check_choices(graph, solver, heads, resample)
    names = select_layers(tree, layers)
    _, timestep_values = _timesteps(tree, names, timesteps)
    out_grid = _output_grid(tree, names, grid)
    options = dict(solver_options)
    precision = options.pop("precision", "float32")
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(_PRECISIONS)}, got {precision!r}")
    positions = _sample_positions(tree, samples)
    all_ids = sample_ids(tree)
    ids = [all_ids[p] for p in positions]
    n = len(positions)
    h, w = out_grid
    if not isinstance(n_components, (int, np.integer)) or isinstance(n_components, bool) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    vectors = np.zeros((n, h, w, int(n_components)))
    values = np.zeros((n, int(n_components)))
    columns = {key: np.zeros(n) for key in ("objective", "loss", "seconds")}
    iterations = np.zeros(n, dtype=np.int64)
    resolved: dict[str, Any] = {}
    methods: set[str] = set()
    n_graphs = 0
    for row, position in enumerate(tqdm(positions, desc="decompose", unit="sample", disable=not progress)):
        operator = sample_operator(
            tree, position, graph=graph, layers=names, heads=heads, timesteps=timestep_values,
            resample=resample, grid=out_grid, weights=weights, dtype=_PRECISIONS[precision], device=device,
        )
        start = time.perf_counter()
        try:
            solution = solve(operator, int(n_components), solver, seed=seed, **options)
        except TypeError as error:
            raise TypeError(f"{error}; see the docstring of decompose for the options of solver={solver!r}") from error
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
        "format": DECOMPOSITION_FORMAT,
        "graph": graph,
        "solver": solver,
        "method": ",".join(sorted(methods)),
        "layers": _json(names),
        "heads": heads,
        "timesteps": _json(timestep_values),
        "resample": resample,
        "grid": np.asarray(out_grid, dtype=np.int64),
        "n_components": int(n_components),
        "n_graphs": int(n_graphs),
        "seed": int(seed),
        "precision": precision,
        "weights": _json(None if weights is None else _site_weights(weights, names)),
        "solver_options": _json(resolved),
        "objective": _OBJECTIVE,
        "store_model": str(root.get("model", "")),
        "store_adapter": str(root.get("adapter", "")),
    }
    return xr.Dataset(
        {
            "vectors": (("sample", "y", "x", "component"), vectors),
            "values": (("sample", "component"), values),
            "objective": ("sample", columns["objective"]),
            "loss": ("sample", columns["loss"]),
            "iterations": ("sample", iterations),
            "seconds": ("sample", columns["seconds"]),
        },
        coords={
            "sample": np.asarray(ids, dtype=str),
            "component": np.arange(int(n_components)),
            "y": np.arange(h),
            "x": np.arange(w),
        },
        attrs=attrs,
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
        A result of :func:`decompose`.
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

    if decomposition.attrs.get("format") != DECOMPOSITION_FORMAT:
        raise ValueError("decomposition must be a result of interpret_spectral.decompose (its 'format' attribute differs)")
    tree = _open(store)
    names = select_layers(tree, layers)
    attrs = decomposition.attrs
    graph, heads, resample = attrs["graph"], attrs["heads"], attrs["resample"]
    timestep_values = json.loads(attrs["timesteps"])
    used = set(json.loads(attrs["layers"]))
    out_grid = tuple(int(v) for v in np.asarray(attrs["grid"]).ravel())
    ids = sample_ids(tree)
    missing = [sid for sid in decomposition["sample"].values.tolist() if sid not in ids]
    if missing:
        raise KeyError(f"samples {missing[:3]} of the decomposition are not in the store; pass the store it came from")
    width = max(1 if heads == "concat" else int(tree[name].attrs["num_heads"]) for name in names)
    n_steps = 1 if timestep_values is None else len(timestep_values)
    n_samples = decomposition.sizes["sample"]
    n_components = decomposition.sizes["component"]
    out = np.full((n_samples, len(names), n_steps, width, n_components), np.nan)
    for row, sid in enumerate(tqdm(decomposition["sample"].values.tolist(), desc="contributions",
                                   unit="sample", disable=not progress)):
        operator = sample_operator(
            tree, ids.index(sid), graph=graph, layers=names, heads=heads, timesteps=timestep_values,
            resample=resample, grid=out_grid, device=device, dtype=_PRECISIONS[attrs.get("precision", "float32")],
        )
        x = decomposition["vectors"].isel(sample=row).values.reshape(-1, n_components)
        for site_graphs, quotients in zip(operator.graphs, operator.rayleigh_quotients(x)):
            step = 0 if site_graphs.timestep is None else site_graphs.timestep
            out[row, names.index(site_graphs.name), step, : site_graphs.num_graphs] = quotients.cpu().numpy()
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
        attrs={"graph": graph, "heads": heads, "resample": resample},
    )

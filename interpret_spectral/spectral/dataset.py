"""Dataset-level spectral decomposition: one set of eigenvector maps for every image.

Paper section 3.3 / 4.2 (Zhang, Yunis & Maire, CVPR 2024).  Every sample ``s`` gets
an ``X_s`` on one output grid; the graphs connect tokens within *and across*
images, so the components mean the same thing in every image.  A Q-K graph
(unit queries against unit keys) groups tokens by where they are, the 'where'
pathway; a V-V graph (unit values against unit values) groups them by what they
are, the 'what' pathway.

Per attention site ``l`` (heads concatenated, patch tokens only) the graph keeps
for every token the ``intra`` most similar tokens of its own image (itself
excluded) and the ``inter`` most similar tokens of the other images, zeroes
similarities not above ``threshold``, symmetrises, ``A = (A + A^T) / 2``, and
row-normalises, ``P_l = D^-1 A``.  With ``G_l`` the resampling from the output
grid to the site's grid (:func:`interpret_spectral.graphs.resampling_matrix`),
the objective is ``mean_l tr(X^T G_l^T P_l G_l X)`` with orthonormal ``X``.

Two solvers:

* ``solver="adam"`` is the paper's procedure and the authors' code: a table of
  softmax logits of ``X`` for every sample (the authors' per-image lookup table);
  each minibatch of samples gets its graphs (neighbours from the minibatch only)
  and ``steps_per_batch`` Adam steps on the relaxed objective of
  :func:`interpret_spectral.solvers.solve_adam` (the per-column Rayleigh quotient
  ``x^T P x`` of the column-normalised ``G X`` pushed to 1 by ``|. - 1|``, plus the
  squared off-diagonal of its Gram matrix, averaged over sites).  The result is
  read from the logits themselves (the authors' code renders its final maps from
  an exponential moving average of them, decay 0.99; that is left out),
  orthogonalised (Eq. 8) over all tokens of all samples, then rotated within its
  span by a Rayleigh-Ritz step on the last epoch's minibatch graphs, which orders
  the components and gives their ``values``.
* ``solver="exact"`` goes beyond the paper: one sparse graph per site over all
  tokens of all samples (neighbours from the whole dataset), ``M = mean_l (N /
  n_l) G_l^T sym(P_l) G_l`` (``N / n_l``, output over site tokens, puts every site
  on one scale as :class:`~interpret_spectral.graphs.LayerDistributedOperator`
  does) assembled as a sparse matrix, and its top eigenvectors from
  :func:`scipy.sparse.linalg.eigsh`; for datasets whose graph fits in memory.

Both read the store one site at a time, in contiguous runs of samples: a pass
(an epoch of ``adam``) reads every site once and builds that site's graphs before
the next site is read, so memory holds one site's unit features for all samples
(``n_samples x tokens x heads * head_dim`` floats, twice for ``"qk"``) plus the
pass's sparse graphs.  Top-k neighbours are computed in chunks of query tokens,
never as a dense ``N x N`` mask over the dataset.
``adam`` can checkpoint its whole state (logits, Adam moments, RNG state, counters)
to a ``.safetensors`` or ``.npz`` file, written atomically, and resume from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
import xarray as xr
from scipy.sparse.linalg import eigsh

from interpret_spectral.spectral.graphs import resampling_matrix
from interpret_spectral.spectral.solvers import fix_signs, orthogonalize, rayleigh_ritz
from interpret_spectral.spectral.decompose import _open, _timesteps, select_layers
from interpret_spectral.store.reader import patch_tokens, sample_ids

__all__ = ["decompose_dataset", "intra_inter_topk"]

GraphKind = Literal["vv", "qk"]
SolverKind = Literal["adam", "exact"]
_GRAPHS = ("vv", "qk")
_SOLVERS = ("adam", "exact")
_RESAMPLE = ("bilinear", "area")
_CHECKPOINT_SUFFIXES = (".safetensors", ".npz")
_CHECKPOINT_FORMAT = "interpret_spectral.dataset_checkpoint/1"
# Query chunks hold at most this many similarities (float32: 64 MiB).
_CHUNK_ELEMENTS = 1 << 24
# Samples read from the store at once when the exact solver loads one site.
_READ_SAMPLES = 16


# -- graphs -----------------------------------------------------------------------------
@torch.no_grad()
def intra_inter_topk(
    query: torch.Tensor | np.ndarray,
    key: torch.Tensor | np.ndarray,
    tokens_per_image: int,
    intra: int,
    inter: int,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k neighbours of every token within its own image and across the other images.

    Tokens are stacked image after image: rows ``i * tokens_per_image`` to
    ``(i + 1) * tokens_per_image - 1`` belong to image ``i``.  The similarity of
    token ``a`` to token ``b`` is ``query[a] @ key[b]``.  For every token this keeps
    the ``intra`` largest similarities to the *other* tokens of its image and the
    ``inter`` largest to tokens of the other images (both capped by the number of
    candidates).  Similarities are computed for chunks of whole images of queries
    at a time, so that memory stays at about ``chunk_size x N`` floats.

    Parameters
    ----------
    query, key : torch.Tensor or numpy.ndarray
        ``(N, D)`` features, ``N`` a multiple of ``tokens_per_image`` (unit-normalise
        them first for cosine similarities).
    tokens_per_image : int
        Tokens of every image.
    intra, inter : int
        Neighbours kept within the image and across images.
    chunk_size : int, optional
        Query tokens per chunk, rounded down to whole images (at least one image);
        by default chunks hold about 16 M similarities.

    Returns
    -------
    values : torch.Tensor
        ``(N, k_intra + k_inter)`` similarities, the intra neighbours first, each
        group in decreasing order.
    indices : torch.Tensor
        ``(N, k_intra + k_inter)`` int64 token indices of those neighbours.

    Examples
    --------
    >>> import torch
    >>> x = torch.nn.functional.normalize(torch.randn(12, 4), dim=1)
    >>> values, indices = intra_inter_topk(x, x, tokens_per_image=4, intra=2, inter=3)
    >>> values.shape, bool((indices[:4, :2] < 4).all()), bool((indices[:4, 2:] >= 4).all())
    (torch.Size([12, 5]), True, True)
    """
    query = torch.as_tensor(query)
    key = torch.as_tensor(key)
    if query.ndim != 2 or key.ndim != 2 or query.shape != key.shape:
        raise ValueError(
            f"query and key must be (N, D) of the same shape, got {tuple(query.shape)} and {tuple(key.shape)}"
        )
    if query.dtype != key.dtype:
        key = key.to(query.dtype)
    n = int(tokens_per_image)
    total = int(query.shape[0])
    if n < 1 or total % n:
        raise ValueError(f"{total} tokens are not whole images of tokens_per_image={tokens_per_image}")
    if intra < 0 or inter < 0 or intra + inter < 1:
        raise ValueError(f"intra and inter must be >= 0 and not both 0, got intra={intra}, inter={inter}")
    n_images = total // n
    k_intra = min(int(intra), n - 1)
    k_inter = min(int(inter), total - n)
    if chunk_size is None:
        images_per_chunk = max(1, _CHUNK_ELEMENTS // (n * total))
    else:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        images_per_chunk = max(1, int(chunk_size) // n)
    values = torch.empty(total, k_intra + k_inter, dtype=query.dtype)
    indices = torch.empty(total, k_intra + k_inter, dtype=torch.int64)
    self_loops = torch.eye(n, dtype=torch.bool)
    for first in range(0, n_images, images_per_chunk):
        last = min(first + images_per_chunk, n_images)
        rows = slice(first * n, last * n)
        chunk = last - first
        sims = (query[rows] @ key.T).view(chunk, n, n_images, n)
        own = torch.arange(chunk)
        images = torch.arange(first, last)
        if k_intra:
            block = sims[own, :, images, :]  # (chunk, n, n): each image against itself
            block = block.masked_fill(self_loops, float("-inf"))
            v, i = block.topk(k_intra, dim=-1)
            values[rows, :k_intra] = v.reshape(-1, k_intra)
            indices[rows, :k_intra] = (i + images.view(-1, 1, 1) * n).reshape(-1, k_intra)
        if k_inter:
            sims[own, :, images, :] = float("-inf")  # the intra block above is a copy
            v, i = sims.view(chunk * n, total).topk(k_inter, dim=-1)
            values[rows, k_intra:] = v
            indices[rows, k_intra:] = i
    return values, indices


def _walk_matrix(values: np.ndarray, indices: np.ndarray, threshold: float) -> sp.csr_matrix:
    """Row-normalised symmetrised sparse graph of top-k neighbours: ``D^-1 (A + A^T) / 2``."""
    n = values.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), values.shape[1])
    v = values.reshape(-1).astype(np.float64)
    c = indices.reshape(-1)
    keep = v > threshold
    affinity = sp.csr_matrix((v[keep], (rows[keep], c[keep])), shape=(n, n))
    affinity = ((affinity + affinity.T) * 0.5).tocsr()
    degree = np.asarray(affinity.sum(axis=1)).ravel()
    inverse = np.divide(1.0, degree, out=np.zeros_like(degree), where=degree > 0)
    return (sp.diags(inverse) @ affinity).tocsr()


# -- what the store holds ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Source:
    """One graph: a site (at one timestep, for stores with timesteps)."""

    site: str
    timestep: int | None  # position along the store's timestep dimension
    label: str
    grid: tuple[int, int]

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]


def _sources(tree: xr.DataTree, graph: str, layers: Any, timesteps: Any) -> list[_Source]:
    """The graphs: every chosen site, at every chosen timestep (as :func:`~interpret_spectral.decompose`)."""
    needed = ("v",) if graph == "vv" else ("q", "k")
    names = select_layers(tree, layers)
    for name in names:
        missing = [var for var in needed if var not in tree[name].data_vars]
        if missing:
            raise ValueError(
                f"site {name!r} has no {', '.join(missing)}: graph={graph!r} needs {' and '.join(needed)}; "
                "probe with capture=('q', 'k', 'v')"
            )
    positions, values = _timesteps(tree, names, timesteps)
    sources = []
    for name in names:
        grid = (int(tree[name].attrs["grid_h"]), int(tree[name].attrs["grid_w"]))
        if positions is None:
            sources.append(_Source(name, None, name, grid))
        else:
            sources.extend(_Source(name, p, f"{name}@t={v}", grid) for p, v in zip(positions, values))
    return sources


def _unit_tokens(tree: xr.DataTree, source: _Source, var: str, samples: slice) -> torch.Tensor:
    """``(samples, tokens, heads * channels)`` unit-norm patch tokens, heads concatenated."""
    array = patch_tokens(tree, source.site, var, samples=samples, timesteps=source.timestep)
    tokens = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 2, 1, 3).flatten(2)
    return torch.nn.functional.normalize(tokens, dim=-1)


def _read_site(
    tree: xr.DataTree, source: _Source, graph: str, n_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit queries and keys (or values twice) of one site for every sample, ``(S, tokens, width)``.

    Read in contiguous runs of ``_READ_SAMPLES`` samples: one site in memory at a time.
    """
    runs = [slice(start, min(start + _READ_SAMPLES, n_samples)) for start in range(0, n_samples, _READ_SAMPLES)]
    if graph == "vv":
        values = torch.cat([_unit_tokens(tree, source, "v", run) for run in runs])
        return values, values
    query = torch.cat([_unit_tokens(tree, source, "q", run) for run in runs])
    key = torch.cat([_unit_tokens(tree, source, "k", run) for run in runs])
    return query, key


@dataclasses.dataclass(frozen=True)
class _Settings:
    graph: str
    intra: int
    inter: int
    threshold: float
    grid: tuple[int, int]
    resample: str
    chunk_size: int | None


def _batch_walk(
    query: torch.Tensor, key: torch.Tensor, samples: np.ndarray, source: _Source, settings: _Settings
) -> sp.csr_matrix:
    """The walk matrix of one site over the tokens of ``samples`` (sample-major)."""
    width = query.shape[-1]
    index = torch.from_numpy(samples)
    values, indices = intra_inter_topk(
        query[index].reshape(-1, width), key[index].reshape(-1, width), source.tokens,
        settings.intra, settings.inter, chunk_size=settings.chunk_size,
    )
    return _walk_matrix(values.numpy(), indices.numpy(), settings.threshold)


def _minibatch_walks(
    tree: xr.DataTree, sources: list[_Source], batches: list[np.ndarray], n_samples: int, settings: _Settings,
) -> list[list[sp.csr_matrix]]:
    """``walks[b][l]``: ``sym(P)`` of site ``l`` over minibatch ``b`` (float32), reading every site once."""
    walks: list[list[sp.csr_matrix]] = [[] for _ in batches]
    for source in sources:
        query, key = _read_site(tree, source, settings.graph, n_samples)
        for b, samples in enumerate(batches):
            walk = _batch_walk(query, key, samples, source, settings)
            walks[b].append(((walk + walk.T) * 0.5).astype(np.float32).tocsr())
        del query, key
    return walks


def _resampler(source: _Source, settings: _Settings) -> sp.csr_matrix | None:
    """``G`` from the output grid to the site's grid, or None when it is the identity."""
    g = sp.csr_matrix(resampling_matrix(settings.grid, source.grid, method=settings.resample))
    expected = (source.tokens, settings.grid[0] * settings.grid[1])
    if g.shape != expected:
        raise RuntimeError(f"resampling_matrix returned {g.shape}, expected {expected}")
    if g.shape[0] == g.shape[1] and abs(g - sp.identity(g.shape[0], format="csr")).max() < 1e-12:
        return None
    return g


# -- the adam solver ---------------------------------------------------------------------
class _SparseProduct(torch.autograd.Function):
    """``matrix @ x`` for a constant scipy sparse ``matrix``; the gradient is ``matrix^T @ grad``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, matrix: sp.csr_matrix) -> torch.Tensor:  # type: ignore[override]
        ctx.matrix = matrix
        return torch.from_numpy(np.asarray(matrix @ x.detach().numpy())).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return torch.from_numpy(np.asarray(ctx.matrix.T @ grad.numpy())).to(grad.dtype), None


class _QuadraticForms(torch.autograd.Function):
    """``diag(x^T S x)`` for a constant symmetric scipy sparse ``S``; the gradient is ``2 S x``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, symmetric: sp.csr_matrix) -> torch.Tensor:  # type: ignore[override]
        product = torch.from_numpy(np.asarray(symmetric @ x.detach().numpy())).to(x.dtype)
        ctx.save_for_backward(product)
        return (product * x.detach()).sum(dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (product,) = ctx.saved_tensors
        return 2.0 * product * grad, None


def _resample_batch(x: torch.Tensor, g: sp.csr_matrix | None) -> torch.Tensor:
    """``(B, n_out, K)`` -> ``(B * n_site, K)``: ``G`` applied to every sample."""
    b, n_out, k = x.shape
    if g is None:
        return x.reshape(b * n_out, k)
    site = _SparseProduct.apply(x.permute(1, 0, 2).reshape(n_out, b * k), g)  # (n_site, B * K)
    return site.reshape(-1, b, k).permute(1, 0, 2).reshape(-1, k)


def _relaxed_loss(columns: torch.Tensor, symmetric_walk: sp.csr_matrix) -> torch.Tensor:
    """The authors' relaxed objective (Eq. 4) for one graph, on column-normalised ``X``.

    ``mean_k |x_k^T P x_k - 1| + mean_{j != k} (x_j^T x_k)^2``, with ``x^T P x`` taken
    as ``x^T sym(P) x`` (equal for every ``x``), as :func:`interpret_spectral.solvers.solve_adam` does.
    """
    x = torch.nn.functional.normalize(columns, dim=0)
    rayleigh = _QuadraticForms.apply(x, symmetric_walk)
    gram = x.T @ x
    k = gram.shape[0]
    off_diagonal = gram - torch.diag(torch.diagonal(gram))
    ortho = off_diagonal.pow(2).sum() / max(k * (k - 1), 1)
    return (rayleigh - 1.0).abs().mean() + ortho


@dataclasses.dataclass
class _AdamState:
    logits: torch.Tensor  # (S, n_out, K)
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    adam_step: torch.Tensor  # (S,) float32, 0 = never updated
    rng_state: torch.Tensor  # uint8
    order: torch.Tensor  # (S,) int64, the current epoch's permutation
    counters: torch.Tensor  # int64 [epoch, next batch in the epoch, optimiser steps]

    def arrays(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name).contiguous() for f in dataclasses.fields(self)}


def _save_checkpoint(path: Path, state: _AdamState, config: dict[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    metadata = json.dumps({"format": _CHECKPOINT_FORMAT, "config": config}, sort_keys=True)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state.arrays(), str(tmp), metadata={"interpret_spectral": metadata})
        else:
            arrays = {name: value.numpy() for name, value in state.arrays().items()}
            with open(tmp, "wb") as handle:
                np.savez(handle, metadata=np.array(metadata), **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _load_checkpoint(path: Path) -> tuple[_AdamState, dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    names = [f.name for f in dataclasses.fields(_AdamState)]
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                metadata = json.loads((handle.metadata() or {})["interpret_spectral"])
                arrays = {name: handle.get_tensor(name) for name in names}
        else:
            with np.load(path, allow_pickle=False) as handle:
                metadata = json.loads(str(handle["metadata"]))
                arrays = {name: torch.from_numpy(handle[name].copy()) for name in names}
    except (KeyError, ValueError, OSError, SafetensorError) as error:
        raise ValueError(
            f"{path} is not a decompose_dataset checkpoint ({type(error).__name__}: {error}); "
            "delete it or pass another checkpoint path"
        ) from error
    if metadata.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a decompose_dataset checkpoint of format {_CHECKPOINT_FORMAT}")
    return _AdamState(**arrays), metadata["config"]


def _optimizer_state(optimizer: torch.optim.Adam, params: list[torch.Tensor], state: _AdamState) -> None:
    """Load the Adam moments and step counts of ``state`` into ``optimizer``."""
    saved = optimizer.state_dict()
    saved["state"] = {
        i: {
            "step": state.adam_step[i].clone(),
            "exp_avg": state.exp_avg[i].clone(),
            "exp_avg_sq": state.exp_avg_sq[i].clone(),
        }
        for i in range(len(params))
        if float(state.adam_step[i]) > 0
    }
    optimizer.load_state_dict(saved)


def _capture_state(
    optimizer: torch.optim.Adam, params: list[torch.Tensor], generator: torch.Generator,
    order: torch.Tensor, counters: tuple[int, int, int],
) -> _AdamState:
    logits = torch.stack([p.detach() for p in params])
    exp_avg = torch.zeros_like(logits)
    exp_avg_sq = torch.zeros_like(logits)
    adam_step = torch.zeros(len(params), dtype=torch.float32)
    for i, p in enumerate(params):
        entry = optimizer.state.get(p)
        if entry:
            exp_avg[i] = entry["exp_avg"]
            exp_avg_sq[i] = entry["exp_avg_sq"]
            adam_step[i] = float(entry["step"])
    return _AdamState(
        logits=logits, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, adam_step=adam_step,
        rng_state=generator.get_state(), order=order.clone(), counters=torch.tensor(counters, dtype=torch.int64),
    )


def _batches(order: np.ndarray, n_batches: int) -> list[np.ndarray]:
    """Split an epoch's order into ``n_batches`` near-equal minibatches (each sorted: tokens in sample order)."""
    return [np.sort(part) for part in np.array_split(order, n_batches)]


def _ritz(
    walks: list[list[sp.csr_matrix]], batches: list[np.ndarray], resamplers: list[sp.csr_matrix | None],
    basis: np.ndarray, n_out: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Rayleigh-Ritz of orthonormal ``basis`` under one epoch's minibatch graphs.

    The operator is ``M = sum_b mean_l G_l^T sym(P_bl) G_l``, where ``P_bl`` links the
    tokens of minibatch ``b`` only: the objective of one pass over the data.
    """
    k = basis.shape[1]
    blocks = basis.reshape(-1, n_out, k)
    product = np.zeros_like(blocks)
    for samples, batch_walks in zip(batches, walks):
        for g, walk in zip(resamplers, batch_walks):
            site = blocks[samples] if g is None else np.stack([g @ block for block in blocks[samples]])
            walked = (walk @ site.reshape(-1, k)).reshape(site.shape)
            back = walked if g is None else np.stack([g.T @ block for block in walked])
            product[samples] += back / len(resamplers)
    return rayleigh_ritz(basis, product.reshape(-1, k))


def _solve_adam(
    tree: xr.DataTree, sources: list[_Source], n_samples: int, settings: _Settings, *,
    n_components: int, batch_size: int, steps_per_batch: int, epochs: int, lr: float, seed: int,
    checkpoint: Path | None, checkpoint_every: int | None, config: dict[str, Any], progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    from tqdm.auto import tqdm

    n_out = settings.grid[0] * settings.grid[1]
    n_batches = math.ceil(n_samples / batch_size)
    resamplers = [_resampler(source, settings) for source in sources]
    resamplers32 = [None if g is None else g.astype(np.float32) for g in resamplers]
    generator = torch.Generator().manual_seed(seed)
    state: _AdamState | None = None
    if checkpoint is not None and checkpoint.exists():
        state, saved_config = _load_checkpoint(checkpoint)
        differing = sorted(
            key for key in set(config) | set(saved_config)
            if key != "epochs" and config.get(key) != saved_config.get(key)
        )
        if differing:
            raise ValueError(
                f"checkpoint {checkpoint} was written with other settings ({', '.join(differing)} differ); "
                "resume with the same store and settings (only epochs may change), or pass a new checkpoint path"
            )
        generator.set_state(state.rng_state)
        epoch, next_batch, step = (int(v) for v in state.counters)
        order = state.order
    else:
        logits = torch.randn(n_samples, n_out, n_components, generator=generator)
        epoch, next_batch, step = 0, 0, 0
        order = torch.arange(n_samples)
    params = [
        (state.logits[i] if state is not None else logits[i]).clone().requires_grad_(True)
        for i in range(n_samples)
    ]
    optimizer = torch.optim.Adam(params, lr=lr)
    if state is not None:
        _optimizer_state(optimizer, params, state)
    del state

    def save() -> None:
        if checkpoint is not None:
            _save_checkpoint(
                checkpoint, _capture_state(optimizer, params, generator, order, (epoch, next_batch, step)), config
            )

    total = epochs * n_batches
    done = min(epoch * n_batches + next_batch, total)
    with tqdm(total=total, initial=done, disable=not progress, desc=f"decompose_dataset {settings.graph}",
              unit="batch") as bar:
        since_save = 0
        # the graphs of the current epoch, built site by site when the epoch (or a resumed part of it) starts
        epoch_walks: list[list[sp.csr_matrix] | None] = []
        while epoch < epochs:
            if next_batch == 0:
                order = torch.randperm(n_samples, generator=generator)
            batches = _batches(order.numpy(), n_batches)
            if next_batch == 0 or not epoch_walks:
                epoch_walks = [None] * next_batch + _minibatch_walks(
                    tree, sources, batches[next_batch:], n_samples, settings
                )
            samples = batches[next_batch]
            walks = epoch_walks[next_batch]
            for _ in range(steps_per_batch):
                optimizer.zero_grad(set_to_none=True)
                x = torch.stack([params[i] for i in samples]).softmax(dim=-1)
                loss = torch.stack([
                    _relaxed_loss(_resample_batch(x, g), walk) for g, walk in zip(resamplers32, walks)
                ]).mean()
                loss.backward()
                optimizer.step()
                step += 1
            next_batch += 1
            since_save += 1
            if next_batch == n_batches:
                epoch, next_batch = epoch + 1, 0
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if next_batch == 0 or (checkpoint_every is not None and since_save >= checkpoint_every):
                save()
                since_save = 0
    with torch.no_grad():
        x = torch.stack([p.detach() for p in params]).softmax(dim=-1).double().numpy()
    basis = orthogonalize(x.reshape(n_samples * n_out, n_components))
    # Rayleigh-Ritz on the last epoch's graphs (rebuilt from its saved order if this run did not build them all)
    batches = _batches(order.numpy(), n_batches)
    if len(epoch_walks) != n_batches or any(w is None for w in epoch_walks):
        epoch_walks = _minibatch_walks(tree, sources, batches, n_samples, settings)
    return _ritz(epoch_walks, batches, resamplers, basis, n_out)


# -- the exact solver --------------------------------------------------------------------
def _solve_exact(
    tree: xr.DataTree, sources: list[_Source], n_samples: int, settings: _Settings, *,
    n_components: int, seed: int, progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    from tqdm.auto import tqdm

    n_out = settings.grid[0] * settings.grid[1]
    operator = sp.csr_matrix((n_samples * n_out, n_samples * n_out))
    for source in tqdm(sources, disable=not progress, desc=f"decompose_dataset {settings.graph} (exact)",
                       unit="site"):
        query, key = _read_site(tree, source, settings.graph, n_samples)
        width = query.shape[-1]
        values, indices = intra_inter_topk(
            query.reshape(-1, width), key.reshape(-1, width), source.tokens, settings.intra, settings.inter,
            chunk_size=settings.chunk_size,
        )
        del query, key
        walk = _walk_matrix(values.numpy(), indices.numpy(), settings.threshold)
        symmetric = ((walk + walk.T) * 0.5).tocsr()
        g = _resampler(source, settings)
        if g is not None:
            blocks = sp.kron(sp.identity(n_samples, format="csr"), g, format="csr")
            symmetric = (blocks.T @ symmetric @ blocks).tocsr()
        # n_out / n_site keeps every site's term on one scale, as LayerDistributedOperator does
        operator = operator + symmetric * (n_out / source.tokens)
    operator = (operator / len(sources)).tocsr()
    start = np.random.default_rng(seed).standard_normal(operator.shape[0])
    values, vectors = eigsh(operator, k=n_components, which="LA", v0=start)
    order = np.argsort(values)[::-1]
    return vectors[:, order], values[order]


# -- the public entry point --------------------------------------------------------------
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


def decompose_dataset(
    store: xr.DataTree | str | os.PathLike[str],
    graph: GraphKind = "vv",
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
    solver: SolverKind = "adam",
    seed: int = 0,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: bool = True,
    *,
    resample: Literal["bilinear", "area"] = "bilinear",
    timesteps: Any = None,
    checkpoint_every: int | None = None,
    chunk_size: int | None = None,
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
    graph : {"vv", "qk"}
        Value-value cosine graph (the 'what' pathway) or query-key graph (the
        'where' pathway).
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
    solver : {"adam", "exact"}
        The paper's minibatch Adam solver, or the sparse eigensolver on the
        full cross-image graph.
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
        Query tokens per top-k chunk (see :func:`intra_inter_topk`).

    Returns
    -------
    xarray.Dataset
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
        the variables the graph needs, or a checkpoint written with other settings.

    Examples
    --------
    >>> from interpret_spectral import open_store
    >>> store = open_store("camvid.h5")  # doctest: +SKIP
    >>> what = decompose_dataset(store, graph="vv", n_components=20, epochs=10)  # doctest: +SKIP
    >>> what["vectors"].dims  # doctest: +SKIP
    ('sample', 'y', 'x', 'component')
    """
    if graph not in _GRAPHS:
        raise ValueError(f"graph must be one of {_GRAPHS}, got {graph!r}")
    if solver not in _SOLVERS:
        raise ValueError(f"solver must be one of {_SOLVERS}, got {solver!r}")
    if resample not in _RESAMPLE:
        raise ValueError(f"resample must be one of {_RESAMPLE}, got {resample!r}")
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
        if solver != "adam":
            raise ValueError("checkpoint= applies to solver='adam' only; the exact solver has no state to resume")
        if checkpoint_path.suffix not in _CHECKPOINT_SUFFIXES:
            raise ValueError(f"checkpoint must end in {' or '.join(_CHECKPOINT_SUFFIXES)}, got {checkpoint_path}")

    tree = _open(store)
    ids = sample_ids(tree)
    n_samples = len(ids)
    if n_samples < 1:
        raise ValueError("the store holds no samples")
    if inter > 0 and n_samples < 2:
        raise ValueError(f"inter={inter} links tokens across images, but the store holds one sample; pass inter=0")
    if solver == "adam" and inter > 0 and batch_size < 2:
        raise ValueError(f"inter={inter} needs minibatches of at least 2 samples, got batch_size={batch_size}")
    sources = _sources(tree, graph, layers, timesteps)
    n_out = out_grid[0] * out_grid[1]
    if n_components >= n_samples * n_out:
        raise ValueError(
            f"n_components={n_components} must be below the number of output tokens {n_samples * n_out} "
            f"({n_samples} samples x grid {out_grid}); use fewer components or a larger grid"
        )
    settings = _Settings(graph, intra, inter, float(threshold), out_grid, resample, chunk_size)
    started = time.perf_counter()
    if solver == "adam":
        config = {
            "graph": graph, "n_components": n_components, "intra": intra, "inter": inter,
            "threshold": float(threshold), "batch_size": batch_size, "steps_per_batch": steps_per_batch,
            "epochs": epochs, "lr": float(lr), "sources": [s.label for s in sources], "grid": list(out_grid),
            "resample": resample, "seed": int(seed),
            "samples_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        }
        vectors, values = _solve_adam(
            tree, sources, n_samples, settings, n_components=n_components, batch_size=batch_size,
            steps_per_batch=steps_per_batch, epochs=epochs, lr=float(lr), seed=int(seed),
            checkpoint=checkpoint_path, checkpoint_every=checkpoint_every, config=config, progress=progress,
        )
    else:
        vectors, values = _solve_exact(
            tree, sources, n_samples, settings, n_components=n_components, seed=int(seed), progress=progress
        )
    vectors = fix_signs(vectors)
    attrs: dict[str, Any] = {
        "graph": graph, "solver": solver, "n_components": n_components, "intra": intra, "inter": inter,
        "threshold": float(threshold), "grid_h": out_grid[0], "grid_w": out_grid[1], "resample": resample,
        "sites": json.dumps([s.label for s in sources]), "seed": int(seed),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if solver == "adam":
        attrs.update(batch_size=batch_size, steps_per_batch=steps_per_batch, epochs=epochs, lr=float(lr))
    return xr.Dataset(
        {
            "vectors": (("sample", "y", "x", "component"),
                        np.asarray(vectors, dtype=np.float32).reshape(n_samples, *out_grid, n_components)),
            "values": (("component",), np.asarray(values, dtype=np.float64)),
        },
        coords={"sample": np.asarray(ids, dtype=str), "component": np.arange(n_components)},
        attrs=attrs,
    )

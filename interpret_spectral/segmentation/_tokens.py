"""Reading the tokens of one attention site of a store, for the single-affinity baselines.

Everything goes through :mod:`interpret_spectral.store.reader` (``patch_tokens``,
``site_names``, ``sample_ids``); these helpers resolve the site, the token source and
the timestep once and give ``(tokens, channels)`` float64 arrays per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from interpret_spectral.store.reader import patch_tokens, sample_ids, site_names

SOURCES = ("features", "q", "k", "v")


def resolve_site(store: xr.DataTree, site: int | str) -> str:
    names = site_names(store)
    if isinstance(site, (int, np.integer)) and not isinstance(site, bool):
        if not -len(names) <= site < len(names):
            raise IndexError(f"site index {site} is out of range for the store's {len(names)} attention sites")
        return names[int(site)]
    if isinstance(site, str):
        if site not in names:
            raise KeyError(f"the store has no site {site!r}; its sites are: {', '.join(names)}")
        return site
    raise TypeError(f"site must be a forward index or a site name, got {type(site).__name__}")


def resolve_source(store: xr.DataTree, name: str, source: str | None) -> str:
    held = set(store[name].data_vars)
    if source is None:
        source = "features" if "features" in held else "k"
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES} (or None), got {source!r}")
    if source not in held:
        hint = " (probe with capture=(..., 'features'), or pick q, k or v)" if source == "features" else ""
        raise KeyError(f"site {name!r} holds no {source!r}; it holds {sorted(held)}{hint}")
    return source


def timestep_selection(store: xr.DataTree, name: str, timestep: int | None) -> int | None:
    node = store[name]
    sizes = [node[var].sizes["timestep"] for var in node.data_vars if "timestep" in node[var].dims]
    has_timestep = bool(sizes)
    if has_timestep and timestep is None:
        raise ValueError(
            f"site {name!r} has a timestep dimension ({sizes[0]} timesteps); "
            "pass timestep= (a position along it)"
        )
    if not has_timestep and timestep is not None:
        raise ValueError(f"site {name!r} has no timestep dimension; pass timestep=None")
    return timestep


def site_tokens(
    store: xr.DataTree, name: str, source: str, index: int, timestep: int | None, center: bool = False
) -> np.ndarray:
    """``(tokens, channels)`` float64 of one sample: features, or q/k/v with heads concatenated;
    minus the sample's mean token when ``center``."""
    values = patch_tokens(store, name, source, samples=index, timesteps=timestep).astype(np.float64)
    if source != "features":
        heads, tokens, channels = values.shape
        values = values.transpose(1, 0, 2).reshape(tokens, heads * channels)
    return values - values.mean(axis=0, keepdims=True) if center else values


def unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def attention_affinity(store: xr.DataTree, name: str, index: int, timestep: int | None) -> np.ndarray:
    """Attention among patch tokens: per-head softmax(q k^T * scale), heads averaged, symmetrised."""
    q = patch_tokens(store, name, "q", samples=index, timesteps=timestep).astype(np.float64)
    k = patch_tokens(store, name, "k", samples=index, timesteps=timestep).astype(np.float64)
    logits = np.einsum("hnc,hmc->hnm", q, k) * float(store[name].attrs["scale"])
    logits -= logits.max(axis=-1, keepdims=True)
    attention = np.exp(logits)
    attention /= attention.sum(axis=-1, keepdims=True)
    mean = attention.mean(axis=0)
    return (mean + mean.T) / 2


def site_grid(store: xr.DataTree, name: str) -> tuple[int, int]:
    return int(store[name].attrs["grid_h"]), int(store[name].attrs["grid_w"])


def check_store(store: xr.DataTree) -> list[str]:
    if not isinstance(store, xr.DataTree):
        raise TypeError(f"expected a store (xarray.DataTree from probe() or open_store()), got {type(store).__name__}")
    ids = sample_ids(store)
    if not ids:
        raise ValueError("the store holds no sample")
    return ids


@dataclass(frozen=True)
class SiteTokens:
    """One site of a store with its token source and timestep resolved: what every baseline reads."""

    store: xr.DataTree
    ids: list[str]
    name: str
    source: str
    timestep: int | None
    grid: tuple[int, int]

    def tokens(self, index: int, center: bool = False) -> np.ndarray:
        """``(tokens, channels)`` float64 of sample ``index`` (:func:`site_tokens`)."""
        return site_tokens(self.store, self.name, self.source, index, self.timestep, center=center)


def select_site(store: xr.DataTree, site: int | str, source: str | None, timestep: int | None) -> SiteTokens:
    """Check the store, then resolve the site, the token source and the timestep, in that order."""
    ids = check_store(store)
    name = resolve_site(store, site)
    source = resolve_source(store, name, source)
    timestep = timestep_selection(store, name, timestep)
    return SiteTokens(store, ids, name, source, timestep, site_grid(store, name))


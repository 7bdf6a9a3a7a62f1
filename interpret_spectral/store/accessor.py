"""The ``spectral`` accessor on stores: attention sites by forward position, on any model.

Importing :mod:`interpret_spectral` registers it on :class:`xarray.DataTree`, so a
store answers ``store.spectral.site(5)`` (or ``.layer(5)``) with the node of its
sixth attention site in forward order, whatever the model calls that module.

Examples
--------
>>> from interpret_spectral.synthetic import planted_store
>>> store = planted_store(n_samples=2, grids=((4, 4), (2, 2)))
>>> store.spectral.sites
['blocks.0.attn', 'blocks.1.attn']
>>> store.spectral.layer(-1).attrs["grid_h"], store.spectral.samples
(2, ['planted-0', 'planted-1'])
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from interpret_spectral.store.reader import require_complete, sample_ids, site_names

__all__ = ["SpectralAccessor"]


@xr.register_datatree_accessor("spectral")
class SpectralAccessor:
    """``store.spectral``: sites in forward order, samples, completeness."""

    def __init__(self, tree: xr.DataTree) -> None:
        self._tree = tree

    @property
    def sites(self) -> list[str]:
        """Site names in forward order.

        Examples
        --------
        >>> from interpret_spectral.synthetic import planted_store
        >>> planted_store(n_samples=1).spectral.sites
        ['blocks.0.attn', 'blocks.1.attn']
        """
        return site_names(self._tree)

    @property
    def samples(self) -> list[str]:
        """Sample ids in write order.

        Examples
        --------
        >>> from interpret_spectral.synthetic import planted_store
        >>> planted_store(n_samples=1).spectral.samples
        ['planted-0']
        """
        return sample_ids(self._tree)

    def site(self, index: int | str) -> xr.DataTree:
        """The node of one attention site: by position in forward order (negative counts from the end) or name.

        Examples
        --------
        >>> from interpret_spectral.synthetic import planted_store
        >>> planted_store(n_samples=1).spectral.site(0).name
        'blocks.0.attn'
        """
        names = self.sites
        if isinstance(index, str):
            if index not in names:
                raise KeyError(f"the store has no site {index!r}; it holds {names[:6]}{' ...' if len(names) > 6 else ''}")
            return self._tree[index]
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"site() takes a position (int) or a site name (str), got {type(index).__name__}")
        if not -len(names) <= index < len(names):
            raise IndexError(f"site {index} is out of range: the store has {len(names)} attention sites (0..{len(names) - 1})")
        return self._tree[names[int(index)]]

    def layer(self, index: int | str) -> xr.DataTree:
        """Alias of :meth:`site`: the ``index``-th attention layer in forward order.

        Examples
        --------
        >>> from interpret_spectral.synthetic import planted_store
        >>> planted_store(n_samples=1).spectral.layer(1).name
        'blocks.1.attn'
        """
        return self.site(index)

    def require_complete(self, allow_incomplete: bool = False) -> xr.DataTree:
        """The store, or a StoreError when it holds fewer samples than requested (see :func:`require_complete`).

        Examples
        --------
        >>> from interpret_spectral.synthetic import planted_store
        >>> planted_store(n_samples=1).spectral.require_complete().attrs["complete"]
        1
        """
        return require_complete(self._tree, allow_incomplete)

"""The one decomposition format, its validation and its one reader.

Every producer of eigenvectors (:func:`interpret_spectral.decompose`,
:func:`interpret_spectral.decompose_dataset`, the NCut baseline) returns an
:class:`xarray.Dataset` built by :func:`make_decomposition`:

- ``vectors`` ``(sample, y, x, component)``: the eigenvectors on the output grid;
- ``values`` ``(sample, component)`` for per-image decompositions, or ``(component,)``
  for one decomposition shared by every sample (dataset level);
- any number of per-sample diagnostics ``(sample,)`` (objective, seconds, ...);
- coordinates ``sample`` (string ids), ``y``, ``x``, ``component``;
- attributes ``format``, ``format_version`` and ``producer`` (the function that made it),
  plus the producer's settings.

Every consumer (segmentation, figures, probes, result files) reads it through
:func:`as_vectors`, which also accepts a bare ``(sample, y, x, component)`` DataArray.

Examples
--------
>>> import numpy as np
>>> d = make_decomposition(np.zeros((1, 2, 3, 4)), np.ones((1, 4)), ["img"], producer="example")
>>> validate_decomposition(d)
>>> as_vectors(d).dims
('sample', 'y', 'x', 'component')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "DECOMPOSITION_FORMAT",
    "DECOMPOSITION_VERSION",
    "VECTOR_DIMS",
    "DecompositionError",
    "make_decomposition",
    "validate_decomposition",
    "as_vectors",
]

DECOMPOSITION_FORMAT = "interpret_spectral.decomposition"
DECOMPOSITION_VERSION = 1
VECTOR_DIMS = ("sample", "y", "x", "component")


class DecompositionError(ValueError):
    """An object that is not a decomposition in the one format."""


def make_decomposition(
    vectors: Any,
    values: Any,
    sample_ids: Sequence[str],
    *,
    producer: str,
    attrs: Mapping[str, Any] | None = None,
    per_sample: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Build a decomposition Dataset in the one format.

    Parameters
    ----------
    vectors : array-like
        ``(sample, y, x, component)`` eigenvectors.
    values : array-like
        ``(sample, component)`` per-image eigenvalues, or ``(component,)`` shared ones.
    sample_ids : sequence of str
        One id per sample.
    producer : str
        The function that made it (``"decompose"``, ``"decompose_dataset"``, ``"ncut"``, ...).
    attrs : mapping, optional
        The producer's settings, stored as attributes.
    per_sample : mapping of str to array-like, optional
        Per-sample diagnostics, each of length ``sample``.

    Returns
    -------
    xarray.Dataset

    Examples
    --------
    >>> import numpy as np
    >>> d = make_decomposition(np.zeros((2, 4, 4, 3)), np.ones(3), ["a", "b"], producer="example")
    >>> d["values"].dims
    ('component',)
    """
    vectors = np.asarray(vectors)
    values = np.asarray(values)
    if vectors.ndim != 4:
        raise DecompositionError(f"vectors must be (sample, y, x, component), got shape {vectors.shape}")
    n, h, w, c = vectors.shape
    ids = np.asarray([str(s) for s in sample_ids], dtype=str)
    if len(ids) != n:
        raise DecompositionError(f"{len(ids)} sample ids for {n} samples of vectors")
    values_dims = ("sample", "component") if values.ndim == 2 else ("component",)
    data: dict[str, Any] = {"vectors": (VECTOR_DIMS, vectors), "values": (values_dims, values)}
    for name, column in (per_sample or {}).items():
        data[name] = ("sample", np.asarray(column))
    all_attrs = {"format": DECOMPOSITION_FORMAT, "format_version": DECOMPOSITION_VERSION, "producer": producer}
    all_attrs.update(attrs or {})
    dataset = xr.Dataset(
        data,
        coords={"sample": ids, "y": np.arange(h), "x": np.arange(w), "component": np.arange(c)},
        attrs=all_attrs,
    )
    validate_decomposition(dataset)
    return dataset


def validate_decomposition(decomposition: Any, source: str = "decomposition") -> None:
    """Check that ``decomposition`` follows the one format; raise :class:`DecompositionError` if not.

    Examples
    --------
    >>> import xarray as xr
    >>> validate_decomposition(xr.Dataset())  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    DecompositionError: decomposition has no 'vectors' variable ...
    """
    if not isinstance(decomposition, xr.Dataset):
        raise DecompositionError(f"{source} must be an xarray.Dataset, got {type(decomposition).__name__}")
    if "vectors" not in decomposition.data_vars:
        raise DecompositionError(
            f"{source} has no 'vectors' variable (it holds {sorted(decomposition.data_vars)}); "
            "pass what decompose(), decompose_dataset() or ncut() returns"
        )
    if "values" not in decomposition.data_vars:
        raise DecompositionError(f"{source} has no 'values' variable")
    fmt = decomposition.attrs.get("format")
    if fmt != DECOMPOSITION_FORMAT:
        raise DecompositionError(f"{source} has format={fmt!r}, expected {DECOMPOSITION_FORMAT!r}")
    vectors = decomposition["vectors"]
    if tuple(vectors.dims) != VECTOR_DIMS:
        raise DecompositionError(f"{source}: vectors must have dims {VECTOR_DIMS}, got {tuple(vectors.dims)}")
    if tuple(decomposition["values"].dims) not in (("sample", "component"), ("component",)):
        raise DecompositionError(
            f"{source}: values must have dims (sample, component) or (component,), "
            f"got {tuple(decomposition['values'].dims)}"
        )
    if not np.issubdtype(vectors.dtype, np.floating):
        raise DecompositionError(f"{source}: vectors must be floating point, got {vectors.dtype}")


def as_vectors(decomposition: xr.Dataset | xr.DataArray) -> xr.DataArray:
    """The ``(sample, y, x, component)`` eigenvectors of a decomposition or a bare DataArray.

    The one reader of eigenvectors: a Dataset must follow the one format (its attributes
    are kept on the returned DataArray); a DataArray must have dims ``y``, ``x``,
    ``component`` and optionally ``sample`` (added, of length 1, when absent).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> bare = xr.DataArray(np.zeros((4, 4, 2)), dims=("y", "x", "component"))
    >>> as_vectors(bare).shape
    (1, 4, 4, 2)
    """
    if isinstance(decomposition, xr.Dataset):
        validate_decomposition(decomposition)
        vectors = decomposition["vectors"].copy()
        vectors.attrs = {**decomposition.attrs, **vectors.attrs}
        return vectors
    if not isinstance(decomposition, xr.DataArray):
        raise TypeError(
            "expected a decomposition (xarray Dataset with 'vectors') or a DataArray "
            f"(sample, y, x, component), got {type(decomposition).__name__}"
        )
    dims = set(decomposition.dims)
    missing = {"y", "x", "component"} - dims
    extra = dims - set(VECTOR_DIMS)
    if missing or extra:
        raise DecompositionError(
            f"vectors must have dims {VECTOR_DIMS} (sample optional), got {decomposition.dims}; "
            f"missing {sorted(missing)}, unexpected {sorted(extra)} (select or stack other dims first, "
            "e.g. .isel(timestep=0))"
        )
    if "sample" not in dims:
        decomposition = decomposition.expand_dims("sample")
    return decomposition.transpose(*VECTOR_DIMS)

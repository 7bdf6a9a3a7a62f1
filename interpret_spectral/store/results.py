"""Result files: decompositions (eigenvectors) and labels (segments) as netCDF4/HDF5.

A decomposition is written in the one format (:mod:`interpret_spectral.store.decomposition`)
and read back through :func:`~interpret_spectral.store.decomposition.validate_decomposition`;
labels are the ``labels (sample, y, x)`` DataArray that ``segment()`` returns.  Files are
written beside their final name, fsynced and renamed only when complete
(:func:`interpret_spectral.store.atomic.replacing_file`).

Attributes netCDF cannot hold (dicts, lists of strings, booleans, None) are stored as
JSON text; numbers, strings and 1-D number lists stay plain attributes.

Examples
--------
>>> import os, tempfile
>>> import numpy as np
>>> from interpret_spectral.store.decomposition import make_decomposition
>>> d = make_decomposition(np.zeros((1, 2, 2, 3)), np.ones((1, 3)), ["img"], producer="example")
>>> path = save_netcdf(d, os.path.join(tempfile.mkdtemp(), "vectors.nc"))
>>> open_decomposition(path)["vectors"].dims
('sample', 'y', 'x', 'component')
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from interpret_spectral.store.atomic import replacing_file
from interpret_spectral.store.decomposition import DecompositionError, validate_decomposition

__all__ = ["save_netcdf", "open_decomposition", "open_labels", "ResultFileError"]


class ResultFileError(ValueError):
    """A file that is not the result file it was given as."""


def _netcdf_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """netCDF attributes hold numbers, strings and 1-D number arrays; the rest becomes JSON."""
    safe: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, (bool, np.bool_)):
            safe[key] = int(value)
        elif isinstance(value, (str, int, float, np.integer, np.floating)):
            safe[key] = value
        elif (
            isinstance(value, (list, tuple, np.ndarray))
            and len(value) > 0
            and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value)
        ):
            safe[key] = np.asarray(value)
        elif value is None:
            safe[key] = "None"
        else:
            safe[key] = json.dumps(value, default=str)
    return safe


def save_netcdf(obj: xr.Dataset | xr.DataArray, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
    """Write a decomposition (Dataset) or labels (DataArray) to a netCDF4/HDF5 file.

    A Dataset holding ``vectors`` must follow the one decomposition format (it is
    validated before anything is written).  The file appears under its final name only
    when complete and fsynced; an earlier file of that name stays until then.  Read it
    back with :func:`open_decomposition` / :func:`open_labels` (or
    ``xarray.open_dataset(path, engine="h5netcdf")``).

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        What ``decompose()``/``decompose_dataset()`` or ``segment()`` returns.
    path : path-like
        The file to write.
    overwrite : bool
        Replace an existing file (default); with False an existing file is an error
        raised before anything is written.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    TypeError
        ``obj`` is not an xarray object.

    Examples
    --------
    >>> import xarray as xr, numpy as np
    >>> import tempfile, os
    >>> labels = xr.DataArray(np.zeros((1, 2, 2), np.int32), dims=("sample", "y", "x"), name="labels",
    ...                       attrs={"k_range": [2, 3], "options": {"a": 1}})
    >>> path = save_netcdf(labels, os.path.join(tempfile.mkdtemp(), "labels.nc"))
    >>> open_labels(path).attrs["options"]
    '{"a": 1}'
    """
    if isinstance(obj, xr.DataArray):
        dataset = obj.to_dataset(name=obj.name or "labels")  # the attributes stay on the variable
    elif isinstance(obj, xr.Dataset):
        if "vectors" in obj.data_vars:
            validate_decomposition(obj)
        dataset = obj.copy()
    else:
        raise TypeError(f"save_netcdf writes an xarray Dataset or DataArray, got {type(obj).__name__}")
    dataset.attrs = _netcdf_attrs(dict(dataset.attrs))
    for name in list(dataset.variables):
        dataset[name].attrs = _netcdf_attrs(dict(dataset[name].attrs))
    path = Path(path).expanduser()
    with replacing_file(path, overwrite=overwrite) as tmp:
        dataset.to_netcdf(tmp, engine="h5netcdf", encoding=_compression(dataset))
    return path


def _compression(dataset: xr.Dataset) -> dict[str, dict[str, Any]]:
    """gzip (level 4, byte shuffle) for every numeric array of a result of 256 elements or more.

    Label maps shrink tens of times (large regions of one id); eigenvectors in float64
    by about a tenth.  Results are small and written once, so the cost is negligible
    beside the computation; readers (xarray, h5py, netCDF-C) decompress transparently.
    """
    return {name: {"zlib": True, "complevel": 4, "shuffle": True}
            for name, variable in dataset.variables.items()
            if variable.dtype.kind in "iufb" and variable.ndim and variable.size >= 256}


def _open(path: str | os.PathLike[str], variable: str, what: str) -> xr.Dataset:
    path = Path(path).expanduser()
    if path.is_dir():
        raise ResultFileError(f"{what} file {path} is a folder; give the .nc file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as opened:
            dataset = opened.load()
    except KeyboardInterrupt:
        raise
    except Exception as error:
        raise ResultFileError(
            f"{path} is not a netCDF/HDF5 file written by interpret-spectral ({type(error).__name__}: {error})"
        ) from error
    if variable not in dataset.data_vars:
        raise ResultFileError(
            f"{path} has no {variable!r} variable (it holds {sorted(map(str, dataset.data_vars))}); is it a {what} file?"
        )
    return dataset


def open_decomposition(path: str | os.PathLike[str]) -> xr.Dataset:
    """Read a vectors file written by :func:`save_netcdf` (``interpret-spectral decompose``).

    Returns
    -------
    xarray.Dataset
        A decomposition in the one format (validated).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ResultFileError
        Not a netCDF file, or not a decomposition; the message says what it holds.

    Examples
    --------
    >>> open_decomposition("/no/such/vectors.nc")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    FileNotFoundError: vectors (decompose) file /no/such/vectors.nc does not exist
    """
    what = "vectors (decompose)"
    dataset = _open(path, "vectors", what)
    try:
        validate_decomposition(dataset, source=str(path))
    except DecompositionError as error:
        raise ResultFileError(f"{error} (is {path} a {what} file?)") from error
    return dataset


def open_labels(path: str | os.PathLike[str]) -> xr.DataArray:
    """Read a labels file written by :func:`save_netcdf` (``interpret-spectral segment``).

    Returns
    -------
    xarray.DataArray
        ``labels (sample, y, x)`` with its coordinates (``k`` per sample, ...).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ResultFileError
        Not a netCDF file, or no ``labels (sample, y, x)`` variable.

    Examples
    --------
    >>> open_labels("/no/such/labels.nc")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    FileNotFoundError: labels (segment) file /no/such/labels.nc does not exist
    """
    labels = _open(path, "labels", "labels (segment)")["labels"]
    if set(labels.dims) != {"sample", "y", "x"}:
        raise ResultFileError(f"{path}: labels must have dims (sample, y, x), got {labels.dims}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ResultFileError(f"{path}: labels must be integers, got {labels.dtype}")
    return labels.transpose("sample", "y", "x")

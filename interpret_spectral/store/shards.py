"""Sharded stores: a folder of single-file stores, one per range of samples, opened as one.

A sharded store is a folder holding ``manifest.json`` and shard files
``shard-00000.h5``, ``shard-00001.h5``, ... (or zarr v3 stores ``shard-00000.zarr``, ...:
``shard_format="zarr"``, the format object stores need; one store holds shards of one
format, recorded in the manifest).  Every shard is a complete store of its own (the
store format, checksums and crash safety included) holding one range of the samples.  The manifest lists the shards, their sample ids, the model /
adapter / layout fingerprint every shard must share and, written last (by atomic
replace), whether the store is ``complete``.

Any number of writers may write shards at once, each its own file, with no lock:
the plan is written first (:func:`create_sharded_store`), each writer writes one
shard (``probe(..., out=shard_path(folder, i))``), and :func:`seal_sharded_store`
checks every shard and records which are complete.  :func:`missing_shards` says which
shards a resumed run must redo.  ``open_store(folder)`` opens the shards lazily as
ONE :class:`xarray.DataTree` with one ``sample`` dimension, Dask-backed (one chunk per
sample), so ``decompose`` and ``decompose_dataset`` see one store.  A sharded store of
zarr shards at an fsspec URL (``s3://bucket/run/store``) opens the same way, read-only
(:mod:`interpret_spectral.store.remote`); shards are written to local folders.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> folder = Path(tempfile.mkdtemp()) / "store"
>>> manifest = create_sharded_store(folder, ["a", "b", "c"], shard_size=2)
>>> [(s["name"], s["samples"]) for s in manifest["shards"]]
[('shard-00000.h5', ['a', 'b']), ('shard-00001.h5', ['c'])]
>>> missing_shards(folder)
[0, 1]
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from interpret_spectral.store.atomic import pid_alive, remove_path, replacing_file
from interpret_spectral.store.files import inspect_file
from interpret_spectral.store.format import FORMAT, StoreError
from interpret_spectral.store.remote import HDF5_AT_URL, RemotePath, location, refuse_url
from interpret_spectral.store.zarr_store import inspect_zarr, is_zarr_path, is_zarr_store, zarr_layout

__all__ = [
    "NotAShardedStoreError",
    "MANIFEST",
    "SHARDED_FORMAT",
    "SHARD_FORMATS",
    "check_shard_format",
    "is_sharded_store",
    "shard_name",
    "shard_path",
    "plan_shards",
    "create_sharded_store",
    "read_manifest",
    "store_fingerprint",
    "shard_complete",
    "missing_shards",
    "seal_sharded_store",
    "open_sharded_store",
    "remove_stale_partials",
]

MANIFEST = "manifest.json"
SHARDED_FORMAT = "interpret_spectral.sharded_store"
SHARDED_VERSION = 1
#: Shard formats and their file name endings: HDF5 files, or zarr v3 stores (folders).
SHARD_FORMATS = {"h5": ".h5", "zarr": ".zarr"}


class NotAShardedStoreError(StoreError, IsADirectoryError):
    """A folder given as a store that has no sharded store's manifest."""


def is_sharded_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder with a sharded store's manifest.

    Examples
    --------
    >>> is_sharded_store("/no/such/folder")
    False
    """
    return (location(path) / MANIFEST).is_file()


def check_shard_format(shard_format: str) -> str:
    """``shard_format`` itself, or a clear error when it is not one of :data:`SHARD_FORMATS`.

    Examples
    --------
    >>> check_shard_format("zarr")
    'zarr'
    """
    if shard_format not in SHARD_FORMATS:
        raise ValueError(f"shard_format must be one of {sorted(SHARD_FORMATS)}, got {shard_format!r}")
    return shard_format


def shard_name(index: int, shard_format: str = "h5") -> str:
    """The file (or, for zarr, folder) name of shard ``index``.

    Examples
    --------
    >>> shard_name(3), shard_name(3, "zarr")
    ('shard-00003.h5', 'shard-00003.zarr')
    """
    if int(index) < 0:
        raise ValueError(f"a shard index is >= 0, got {index}")
    return f"shard-{int(index):05d}{SHARD_FORMATS[check_shard_format(shard_format)]}"


def shard_path(folder: str | os.PathLike[str], index: int, shard_format: str | None = None) -> Path:
    """Where shard ``index`` of the store in ``folder`` is written.

    ``shard_format`` None takes the format the folder's manifest records (``"h5"`` when
    there is no manifest yet).

    Examples
    --------
    >>> shard_path("store", 1).as_posix(), shard_path("store", 1, "zarr").as_posix()
    ('store/shard-00001.h5', 'store/shard-00001.zarr')
    """
    refuse_url(folder, "shard_path()")  # shards are written to local folders
    if shard_format is None:
        shard_format = read_manifest(folder)["shard_format"] if is_sharded_store(folder) else "h5"
    return Path(folder) / shard_name(index, shard_format)


def plan_shards(sample_ids: Sequence[str], shard_size: int, shard_format: str = "h5") -> list[dict[str, Any]]:
    """Split sample ids into consecutive shards of at most ``shard_size`` samples.

    Parameters
    ----------
    sample_ids : sequence of str
        Every sample id of the store, in order (unique).
    shard_size : int
        Samples per shard.
    shard_format : {"h5", "zarr"}
        The shards' format (it names them).

    Returns
    -------
    list of dict
        Per shard: ``name``, ``start``, ``stop`` (positions in the whole store) and ``samples``.

    Examples
    --------
    >>> [(s["start"], s["stop"]) for s in plan_shards(["a", "b", "c", "d", "e"], 2)]
    [(0, 2), (2, 4), (4, 5)]
    """
    ids = [str(s) for s in sample_ids]
    if isinstance(shard_size, bool) or int(shard_size) < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    check_shard_format(shard_format)
    if not ids:
        raise ValueError("a sharded store needs at least one sample id")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        twice = next(s for s in ids if s in seen or seen.add(s))  # type: ignore[func-returns-value]
        raise ValueError(f"sample id {twice!r} is given twice; sample ids must be unique")
    size = int(shard_size)
    return [
        {"name": shard_name(i, shard_format), "start": start, "stop": min(start + size, len(ids)), "samples": ids[start:start + size]}
        for i, start in enumerate(range(0, len(ids), size))
    ]


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    with replacing_file(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a sharded store's ``manifest.json``.

    Raises
    ------
    NotAShardedStoreError
        The folder has no manifest (it is not a sharded store).
    StoreError
        The manifest is not one this package wrote.

    Examples
    --------
    >>> read_manifest("/tmp")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    NotAShardedStoreError: /tmp is a folder without manifest.json ...
    """
    folder = location(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise NotAShardedStoreError(
            f"{folder} is a folder without {MANIFEST}, so not a sharded store; give a store file (.h5) or a "
            "folder written by the runner or create_sharded_store()"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StoreError(f"{path} is not readable JSON ({error}); restore it or rerun the job that wrote {folder}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != SHARDED_FORMAT:
        raise StoreError(f"{path} is not a sharded-store manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if int(manifest.get("format_version", -1)) > SHARDED_VERSION:
        raise StoreError(f"{path} has format_version {manifest['format_version']}; this version reads up to "
                         f"{SHARDED_VERSION}: upgrade interpret_spectral")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not shards or not all(isinstance(s, dict) and "name" in s and "samples" in s
                                                               for s in shards):
        raise StoreError(f"{path} lists no shards; rerun the job that wrote {folder}")
    manifest.setdefault("shard_format", "h5")  # manifests written before zarr shards
    suffix = SHARD_FORMATS.get(manifest["shard_format"])
    if suffix is None or not all(str(s["name"]).endswith(suffix) for s in shards):
        raise StoreError(f"{path} records shard_format {manifest['shard_format']!r} but lists shards "
                         f"{[s['name'] for s in shards][:2]}...; the manifest was edited: rerun the job that wrote {folder}")
    return manifest


def create_sharded_store(
    folder: str | os.PathLike[str],
    sample_ids: Sequence[str],
    shard_size: int,
    *,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
    shard_format: str = "h5",
) -> dict[str, Any]:
    """Write the plan of a sharded store (its manifest, not complete) into ``folder``.

    Parameters
    ----------
    folder : path-like
        The store's folder (created; it must not hold another store unless ``resume``).
    sample_ids : sequence of str
        Every sample id, in order.
    shard_size : int
        Samples per shard.
    resume : bool
        Keep an existing manifest with the same plan (its complete shards stay).
    metadata : dict, optional
        JSON-able facts recorded in the manifest (e.g. the run's settings).
    shard_format : {"h5", "zarr"}
        HDF5 shard files, or zarr v3 shard stores (for object stores); every shard of
        the store has this format.

    Returns
    -------
    dict
        The manifest.

    Raises
    ------
    FileExistsError
        ``folder`` already holds a sharded store (and not ``resume``), or other files.
    StoreError
        ``resume`` with a store of a different plan.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp() + "/s"
    >>> create_sharded_store(folder, ["a"], 4)["complete"]
    False
    """
    refuse_url(folder, "create_sharded_store()")
    folder = Path(folder).expanduser()
    shards = plan_shards(sample_ids, shard_size, shard_format)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; a sharded store is a folder: choose another name")
    if is_sharded_store(folder):
        existing = read_manifest(folder)
        if not resume:
            raise FileExistsError(f"{folder} already holds a sharded store; resume it, or remove it first")
        if existing["shard_format"] != shard_format:
            raise StoreError(
                f"{folder} holds a sharded store of {existing['shard_format']} shards, not {shard_format}; resume it "
                f"with shard_format={existing['shard_format']!r}, or write to a new folder"
            )
        if [s["samples"] for s in existing["shards"]] != [s["samples"] for s in shards]:
            raise StoreError(
                f"{folder} holds a sharded store of other samples or another shard size; resume with the same "
                "images and shard size, or write to a new folder"
            )
        return existing
    if folder.is_dir() and any(p.name != MANIFEST for p in folder.iterdir()):
        raise FileExistsError(f"{folder} holds files but no {MANIFEST}; give an empty or new folder for a sharded store")
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": SHARDED_FORMAT, "format_version": SHARDED_VERSION, "store_format": FORMAT,
        "shard_format": shard_format,
        "shard_size": int(shard_size), "samples": sum(len(s["samples"]) for s in shards),
        "fingerprint": None, "metadata": dict(metadata or {}), "shards": shards, "complete": False,
    }
    _write_manifest(folder, manifest)
    return manifest


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value = value.tolist()
        return value[0] if isinstance(value, list) and len(value) == 1 else value
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def store_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What every shard of one store must share: model, adapter, input shape and site layout.

    Read from the store's attributes and array shapes (no data is read): with h5py from
    an HDF5 shard, from the metadata of a zarr one.

    Examples
    --------
    >>> from interpret_spectral.synthetic import planted_store
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "s.h5")
    >>> planted_store(n_samples=1, path=path).close()
    >>> fingerprint = store_fingerprint(path)
    >>> fingerprint["model"], fingerprint["sites"]["blocks.1.attn"]["grid"]
    ('planted', [4, 4])
    """
    if is_zarr_store(path):
        root_attrs, groups = zarr_layout(path)
    else:
        root_attrs, groups = _h5_layout(path)
    root = {key: _plain(root_attrs.get(key)) for key in ("model", "adapter", "format_version", "input_shape",
                                                          "preprocessing", "capture", "compute_dtype")}
    sites: dict[str, Any] = {}
    for name, (attrs, shapes) in groups.items():
        if "order" not in attrs:
            continue
        arrays = {var: [dtype, list(shape[1:])] for var, (dtype, shape) in shapes.items()
                  if var in ("q", "k", "v", "features")}
        sites[name] = {
            "order": _plain(attrs["order"]),
            "grid": [_plain(attrs.get("grid_h")), _plain(attrs.get("grid_w"))],
            "num_heads": _plain(attrs.get("num_heads")), "head_dim": _plain(attrs.get("head_dim")),
            "arrays": arrays,
        }
    return {**{k: v for k, v in root.items() if v is not None}, "sites": sites}


def _h5_layout(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, tuple[dict[str, Any], dict[str, Any]]]]:
    """Root attributes, and per group its attributes and its datasets' ``(dtype, shape)``, read with h5py."""
    import h5py

    with h5py.File(path, "r") as handle:
        groups = {
            name: (dict(group.attrs), {var: (str(d.dtype), tuple(d.shape)) for var, d in group.items()
                                       if isinstance(d, h5py.Dataset)})
            for name, group in handle.items() if isinstance(group, h5py.Group)
        }
        return dict(handle.attrs), groups


def _difference(expected: dict[str, Any], found: dict[str, Any]) -> str:
    for key in sorted(set(expected) | set(found)):
        if key == "sites":
            continue
        if expected.get(key) != found.get(key):
            return f"{key} {found.get(key)!r} (the store's: {expected.get(key)!r})"
    a, b = expected.get("sites", {}), found.get("sites", {})
    if set(a) != set(b):
        extra, lacking = sorted(set(b) - set(a)), sorted(set(a) - set(b))
        return f"sites {extra[:3] or lacking[:3]} {'not in the store' if extra else 'missing'}"
    for name in a:
        if a[name] != b[name]:
            return f"the layout of site {name!r}: {b[name]} (the store's: {a[name]})"
    return "nothing"


def _check_fingerprint(expected: dict[str, Any] | None, path: Path | RemotePath) -> dict[str, Any]:
    found = store_fingerprint(path)
    if expected is not None and found != expected:
        raise StoreError(
            f"shard {path} does not belong to the store in {path.parent}: it differs in {_difference(expected, found)}; "
            "remove it and rerun its samples with the store's model and settings"
        )
    return found


def shard_complete(folder: str | os.PathLike[str], entry: dict[str, Any]) -> bool:
    """Whether a shard of the plan is on disk with exactly its samples and its writer finished.

    A shard file holding other samples than the plan says is refused (it belongs to
    another store); an unreadable or half-written one is simply not complete.

    Examples
    --------
    >>> import tempfile
    >>> shard_complete(tempfile.mkdtemp(), {"name": "shard-00000.h5", "samples": ["a"]})
    False
    """
    path = location(folder) / entry["name"]
    if isinstance(path, RemotePath) and not is_zarr_path(path):
        raise StoreError(f"{path}: {HDF5_AT_URL}")
    if not path.exists():
        return False
    try:
        facts = inspect_zarr(path) if is_zarr_store(path) else inspect_file(path)
    except StoreError:
        return False
    if facts.ids != list(entry["samples"])[: len(facts.ids)]:
        raise StoreError(
            f"shard {path} holds samples {facts.ids[:3]}... but the manifest plans {list(entry['samples'])[:3]}...; "
            "it does not belong to this store: remove it and rerun its samples"
        )
    return len(facts.ids) == len(entry["samples"]) and facts.writing_finished is not False


def missing_shards(folder: str | os.PathLike[str]) -> list[int]:
    """Indices of the shards a (resumed) run still has to write.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp() + "/s"
    >>> _ = create_sharded_store(folder, ["a", "b"], 1)
    >>> missing_shards(folder)
    [0, 1]
    """
    manifest = read_manifest(folder)
    _check_one_format(location(folder), manifest)
    return [i for i, entry in enumerate(manifest["shards"]) if not shard_complete(folder, entry)]


def _check_one_format(folder: Path | RemotePath, manifest: dict[str, Any]) -> None:
    """Refuse a shard of another format than the manifest's in the folder (one store, one shard format)."""
    fmt = manifest["shard_format"]
    for other, suffix in SHARD_FORMATS.items():
        strays = sorted(folder.glob(f"shard-*{suffix}"), key=str) if other != fmt else []
        if strays:
            raise StoreError(
                f"{folder} is a sharded store of {fmt} shards (its manifest) but holds {strays[0].name}, a {other} "
                f"shard: a store holds shards of one format; remove it and rerun its samples as {fmt}"
            )


def seal_sharded_store(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every shard, record which are complete and the shared fingerprint; ``complete`` last.

    Safe to call at any time and from any process (it only reads the shards and
    replaces the manifest atomically); a store is ``complete`` when every planned shard
    is on disk, finished, and of the same model and layout.

    Raises
    ------
    StoreError
        A shard of another model, adapter, input size or site layout, or holding other
        samples than planned.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp() + "/s"
    >>> _ = create_sharded_store(folder, ["a"], 1)
    >>> seal_sharded_store(folder)["complete"]
    False
    """
    refuse_url(folder, "seal_sharded_store()")
    folder = Path(folder)
    manifest = read_manifest(folder)
    _check_one_format(folder, manifest)
    fingerprint = manifest.get("fingerprint")
    for entry in manifest["shards"]:
        done = shard_complete(folder, entry)
        entry["complete"] = done
        if done:
            fingerprint = _check_fingerprint(fingerprint, folder / entry["name"])
    manifest["fingerprint"] = fingerprint
    manifest["complete"] = all(entry["complete"] for entry in manifest["shards"])
    _write_manifest(folder, manifest)
    return manifest


def remove_stale_partials(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove ``*.partial-<pid>`` leftovers of writers that were killed (their process is gone).

    Examples
    --------
    >>> import tempfile
    >>> remove_stale_partials(tempfile.mkdtemp())
    []
    """
    removed = []
    for path in Path(folder).glob("*.partial-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            remove_path(path)
            removed.append(path)
    return removed


def _concat_nodes(trees: list[Any], chunk_samples: int) -> Any:
    import xarray as xr

    nodes: dict[str, Any] = {}
    for node in trees[0].subtree:
        parts = []
        for tree in trees:
            ds = tree[node.path].to_dataset(inherit=False) if node.path != "/" else tree.to_dataset(inherit=False)
            # Only per-sample arrays become Dask arrays; small per-site coordinates (token_y, ...)
            # stay lazily read numpy, so reading them costs no Dask compute.
            chunked = {name: var.chunk({"sample": chunk_samples}) for name, var in ds.variables.items()
                       if "sample" in var.dims and name not in ds.indexes}
            ds = ds.assign_coords({k: v for k, v in chunked.items() if k in ds.coords}).assign(
                {k: v for k, v in chunked.items() if k not in ds.coords})
            parts.append(ds)
        if "sample" in parts[0].dims:
            joined = xr.concat(parts, dim="sample", data_vars="minimal", coords="minimal", compat="override",
                               join="override", combine_attrs="override")
        else:
            joined = parts[0]
        nodes[node.path] = joined
    return xr.DataTree.from_dict(nodes)


def open_sharded_store(
    folder: str | os.PathLike[str],
    open_file: Callable[[Path | RemotePath], Any],
    chunk_samples: int = 1,
) -> Any:
    """Open the complete shards of a sharded store lazily as one Dask-backed DataTree.

    ``interpret_spectral.open_store(folder)`` calls this; use that.  Every shard is
    opened with ``open_file`` (the single-file opener: checks, checksums) and checked
    against the manifest's fingerprint; every group is concatenated along ``sample``.

    Parameters
    ----------
    folder : path-like or str
        The store's folder, or its fsspec URL (zarr shards only; read-only).
    open_file : callable
        Opens one shard file (``open_store``).
    chunk_samples : int
        Samples per Dask chunk (1: reading one sample reads only that sample).

    Returns
    -------
    xarray.DataTree
        Root attributes as a single-file store's, with ``samples_requested`` (every
        planned sample), ``samples_written`` and ``complete`` (1 when every shard is).

    Raises
    ------
    StoreError
        No manifest, no complete shard, a shard of another model or layout, HDF5 shards
        at a URL.

    Examples
    --------
    >>> from interpret_spectral import open_store
    >>> store = open_store("out/run/store")  # doctest: +SKIP
    >>> store["encoder.layer.0.attention"]["q"].chunks[0][:3]  # doctest: +SKIP
    (1, 1, 1)
    """
    folder = location(folder)
    manifest = read_manifest(folder)
    if isinstance(folder, RemotePath) and manifest["shard_format"] != "zarr":
        raise StoreError(f"{folder} holds {manifest['shard_format']} shards: {HDF5_AT_URL}")
    _check_one_format(folder, manifest)
    fingerprint = manifest.get("fingerprint")
    ready = [entry for entry in manifest["shards"] if shard_complete(folder, entry)]
    if not ready:
        raise StoreError(
            f"no shard of the sharded store {folder} is complete yet; run (or resume) the job that writes it"
        )
    trees = []
    try:
        for entry in ready:
            path = folder / entry["name"]
            fingerprint = _check_fingerprint(fingerprint, path)
            trees.append(open_file(path))
        joined = _concat_nodes(trees, int(chunk_samples))
    except BaseException:
        for tree in trees:
            tree.close()
        raise
    planned = int(sum(len(entry["samples"]) for entry in manifest["shards"]))
    n = int(joined.sizes["sample"])
    joined.attrs.update(trees[0].attrs)
    joined.attrs.update({"samples_requested": planned, "samples_written": n, "complete": int(n == planned),
                         "shards": len(ready), "source": str(folder)})

    def close() -> None:
        for tree in trees:
            tree.close()

    joined.set_close(close)
    return joined

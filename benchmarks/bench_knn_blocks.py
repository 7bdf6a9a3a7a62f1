"""Brute-force kNN of one site: one process against row blocks on a 2-worker Dask LocalCluster (issue 13, item 4).

Run from the repository root (about a minute at the defaults; best when the machine is idle)::

    .venv/bin/python benchmarks/bench_knn_blocks.py [--images 300] [--grid 16] [--width 384] [--workers 2]

The features are DINOv2-S/14-shaped unit values of one site (6 heads x 64 channels
concatenated, ``--grid`` x ``--grid`` tokens per image), every token near one of 30
object directions shared across images.  :func:`~interpret_spectral.spectral.topk.intra_inter_topk`
(``neighbours="exact"``, intra 10, inter 10) runs in this process with one torch
thread, with ``--workers`` torch threads, and in row blocks on a ``LocalCluster`` of
``--workers`` processes of one thread each (``client=``; the cluster's start-up and
the workers' import of torch are timed apart).  The table gives the wall time, the speed-up over one thread, and
whether the neighbours equal the one-process ones exactly.  Prints a markdown table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow a shared machine badly

import argparse  # noqa: E402
import importlib  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

OBJECTS = 30


def _features(n_images: int, grid: int, width: int, seed: int = 0):
    import torch

    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(OBJECTS, width)).astype(np.float32)
    labels = rng.integers(0, OBJECTS, size=n_images * grid * grid)
    x = directions[labels] + 0.8 * rng.standard_normal((labels.size, width), dtype=np.float32)
    return torch.nn.functional.normalize(torch.from_numpy(x), dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--intra", type=int, default=10)
    parser.add_argument("--inter", type=int, default=10)
    args = parser.parse_args()

    import torch
    from distributed import Client, LocalCluster

    from interpret_spectral.spectral.topk import intra_inter_topk

    x = _features(args.images, args.grid, args.width)
    n = args.grid * args.grid
    options = dict(tokens_per_image=n, intra=args.intra, inter=args.inter, neighbours="exact")
    rows = []

    def timed(label: str, **extra):
        started = time.perf_counter()
        result = intra_inter_topk(x, x, **options, **extra)
        return label, time.perf_counter() - started, result

    torch.set_num_threads(1)
    label, base, reference = timed("one process, 1 thread")
    rows.append((label, base, True))
    torch.set_num_threads(args.workers)
    label, seconds, result = timed(f"one process, {args.workers} threads")
    rows.append((label, seconds, torch.equal(result[1], reference[1]) and torch.equal(result[0], reference[0])))
    torch.set_num_threads(1)

    started = time.perf_counter()
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           memory_limit=0, env={"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    client = Client(cluster)
    client.wait_for_workers(args.workers)
    client.run(importlib.import_module, "interpret_spectral.spectral.blocks")  # workers import torch once
    startup = time.perf_counter() - started
    try:
        label, seconds, result = timed(f"LocalCluster, {args.workers} workers x 1 thread", client=client)
        rows.append((label, seconds, torch.equal(result[1], reference[1]) and torch.equal(result[0], reference[0])))
    finally:
        client.close()
        cluster.close()

    tokens = args.images * n
    print(f"kNN of one site: {args.images} images x {n} tokens = {tokens:,} tokens, width {args.width}, "
          f"intra {args.intra} + inter {args.inter}; {tokens**2 * args.width:.2e} multiply-adds; "
          f"cluster start-up {startup:.1f} s (not in the times); load average {os.getloadavg()[0]:.2f}\n")
    print("| path | seconds | speed-up | identical to one process |")
    print("|---|---:|---:|---|")
    for label, seconds, same in rows:
        print(f"| {label} | {seconds:.1f} | {base / seconds:.2f}x | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()

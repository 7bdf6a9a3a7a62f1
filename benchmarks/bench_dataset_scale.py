"""Dataset-level decomposition at scale: 1,000 images of DINOv2-shaped synthetic values (issue 13, item 4).

Run from the repository root (several minutes; best when the machine is idle)::

    .venv/bin/python benchmarks/bench_dataset_scale.py [--images 1000] [--grid 16] [--subset 20]

A synthetic store of ``--images`` images is written to a temporary HDF5 file (values
only, float16): 12 sites x 6 heads x 64 channels on a ``--grid`` x ``--grid`` token grid,
every token near one of 30 object directions shared across images (per site and head)
plus noise, so that cross-image neighbours mean something.  Then
:func:`interpret_spectral.decompose_dataset` (``graph="vv"``, ``solver="exact"``,
``neighbours="auto"``: FAISS past :data:`~interpret_spectral.spectral.topk.EXACT_LIMIT`
tokens) runs on it.  The table gives its wall time, the peak resident memory of the
process (``ru_maxrss``) and the recall@k of the approximate cross-image neighbours of
one site against brute force, for the tokens of ``--subset`` images (their exact
neighbours among all tokens).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow a shared machine badly

import argparse  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

SITES, HEADS, CHANNELS, OBJECTS = 12, 6, 64, 30


def _write_store(path: Path, n_images: int, grid: int, seed: int = 0) -> None:
    from interpret_spectral.capture.contract import AttentionSite
    from interpret_spectral.store.writer import create_store

    rng = np.random.default_rng(seed)
    sites = [AttentionSite(f"blocks.{i}.attn", f"blocks.{i}.attn", i, HEADS, CHANNELS, CHANNELS**-0.5,
                           (grid, grid), ("patch",) * (grid * grid)) for i in range(SITES)]
    directions = rng.normal(size=(SITES, HEADS, OBJECTS, CHANNELS)).astype(np.float32)
    writer = create_store(sites, path=path, capture=("v",), dtype="float16", attrs={"model": "synthetic"})
    try:
        for first in range(0, n_images, 50):
            ids = [f"image-{i}" for i in range(first, min(first + 50, n_images))]
            objects = rng.integers(0, OBJECTS, size=(len(ids), 4))  # four objects per image
            layout = rng.integers(0, 4, size=(len(ids), grid * grid))
            labels = np.take_along_axis(objects, layout, axis=1)  # (images, tokens)
            arrays = {}
            for s, site in enumerate(sites):
                v = directions[s][:, labels]  # (heads, images, tokens, channels)
                v = v + 0.8 * rng.standard_normal(v.shape, dtype=np.float32)
                arrays[site.name] = {"v": v.transpose(1, 0, 2, 3)}
            writer.append(ids, arrays)
    except BaseException:
        writer.abort()
        raise
    writer.close().close()


def _recall(store: object, subset: int, n_images: int, grid: int, inter: int) -> float:
    import torch

    from interpret_spectral.spectral.topk import intra_inter_topk
    from interpret_spectral.store.reader import patch_tokens

    n = grid * grid
    v = patch_tokens(store, "blocks.0.attn", "v", samples=slice(0, n_images)).astype(np.float32)
    x = torch.nn.functional.normalize(torch.from_numpy(v).permute(0, 2, 1, 3).flatten(2).reshape(-1, v.shape[1] * v.shape[3]), dim=1)
    _, approx = intra_inter_topk(x, x, n, 0, inter, neighbours="approximate")
    rows = torch.arange(subset * n)
    sims = x[rows] @ x.T
    own = rows // n
    sims[torch.arange(len(rows))[:, None], own[:, None] * n + torch.arange(n)[None, :]] = float("-inf")
    exact = sims.topk(inter, dim=1).indices
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / inter for a, b in zip(exact, approx[rows])]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--subset", type=int, default=20, help="images whose neighbours are checked by brute force")
    parser.add_argument("--components", type=int, default=20)
    args = parser.parse_args(argv)

    from interpret_spectral import decompose_dataset, open_store

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scale.h5"
        start = time.perf_counter()
        _write_store(path, args.images, args.grid)
        written = time.perf_counter() - start
        store = open_store(path)
        start = time.perf_counter()
        result = decompose_dataset(store, graph="vv", n_components=args.components, intra=10, inter=10,
                                   grid=args.grid, solver="exact", progress=True, neighbours="auto")
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        recall = _recall(store, args.subset, args.images, args.grid, 10)
    tokens = args.images * args.grid**2
    load = os.getloadavg()
    print(f"{args.images} images x {args.grid}x{args.grid} tokens = {tokens} tokens per site, {SITES} sites x "
          f"{HEADS} heads x {CHANNELS} channels (values, float16 store written in {written:.0f} s); "
          f"load average {load[0]:.1f} on {os.cpu_count()} cores\n")
    print("| images | tokens / site | components | seconds | peak RSS (GB) | recall@10 (inter, site 0) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {args.images} | {tokens} | {result.sizes['component']} | {seconds:.0f} | {peak:.2f} | {recall:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

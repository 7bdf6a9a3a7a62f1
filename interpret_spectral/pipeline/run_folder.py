"""The run folder: written beside ``out`` as ``<out>.partial-<pid>``, swapped in only on success.

Examples
--------
>>> is_run_output("summary.json")
True
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from interpret_spectral.store.atomic import partial_name, pid_alive, remove_path, replace_dir

__all__ = ["is_run_output", "check_run_folder", "run_folder"]

logger = logging.getLogger(__name__)

_RUN_OUTPUT = re.compile(r"^(store\.h5(\.partial)?|summary\.json|figures|(vectors|labels)_.+\.nc)$")


def is_run_output(name: str) -> bool:
    """Whether a file name in a run folder belongs to the run (replaced by ``--overwrite``).

    Examples
    --------
    >>> is_run_output("vectors_qk.nc"), is_run_output("notes.txt")
    (True, False)
    """
    return bool(_RUN_OUTPUT.match(name))


def _partials(out: Path) -> list[tuple[Path, int]]:
    """``<out>.partial-<pid>`` folders beside ``out``, newest first, with their process ids."""
    found = []
    if out.parent.is_dir():
        for path in out.parent.glob(f"{_glob_escape(out.name)}.partial-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and path.is_dir():
                found.append((path, int(pid)))
    return sorted(found, key=lambda item: item[0].stat().st_mtime, reverse=True)


def _glob_escape(text: str) -> str:
    """``text`` with glob's special characters escaped.

    Examples
    --------
    >>> _glob_escape("run[1]")
    'run[[]1]'
    """
    import glob

    return glob.escape(text)


def check_run_folder(out: str | os.PathLike[str], overwrite: bool = False, resume: bool = False) -> Path:
    """Refuse to start a run that would clash with ``out``; call it before anything slow.

    Raises
    ------
    ValueError
        ``overwrite`` and ``resume`` together.
    FileExistsError
        ``out`` holds a run (``store.h5``) and neither ``overwrite`` nor ``resume``.
    NotADirectoryError
        ``out`` is a file.
    RuntimeError
        Another live process is writing a run into ``out``.

    Examples
    --------
    >>> check_run_folder("out/new-run", overwrite=True, resume=True)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: --overwrite and --resume exclude each other
    """
    out = Path(out).expanduser()
    if overwrite and resume:
        raise ValueError("--overwrite and --resume exclude each other")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {out} is a file; give a folder name")
    if (out / "store.h5").exists() and not (overwrite or resume):
        raise FileExistsError(
            f"{out} already holds a run (store.h5); pass --overwrite to replace it or --resume to continue it"
        )
    busy = [(path, pid) for path, pid in _partials(out) if pid != os.getpid() and pid_alive(pid)]
    if busy:
        raise RuntimeError(f"another run (process {busy[0][1]}) is writing {out} (in {busy[0][0]}); wait for it to end")
    return out


@contextmanager
def run_folder(out: Path, overwrite: bool, resume: bool) -> Iterator[Path]:
    """A staging folder beside ``out``, swapped in as ``out`` only if the block succeeds.

    With ``resume`` the store of an interrupted run (a ``.partial-<pid>`` folder of a
    process that is gone) or of the complete run in ``out`` is continued.  On failure
    the staging folder is removed (a resumed interrupted run is put back as it was).
    """
    check_run_folder(out, overwrite, resume)
    staging = partial_name(out)
    remove_path(staging)
    out.parent.mkdir(parents=True, exist_ok=True)
    stale = [path for path, pid in _partials(out) if path != staging and not pid_alive(pid)]
    adopted: Path | None = None
    if resume and stale:
        adopted = stale.pop(0)
        logger.info("resuming the interrupted run in %s", adopted)
        os.rename(adopted, staging)
    else:
        staging.mkdir()
        if resume and (out / "store.h5").is_file():
            shutil.copy2(out / "store.h5", staging / "store.h5")  # the old run stays intact until the swap
    try:
        yield staging
        replace_dir(staging, out, carry=lambda name: not is_run_output(name))
        for path in stale:  # leftovers of killed runs: the new run supersedes them
            remove_path(path)
    except BaseException:
        if adopted is not None and staging.exists():
            os.rename(staging, adopted)
        raise
    finally:
        remove_path(staging)

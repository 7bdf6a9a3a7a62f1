"""Replace-on-success for files and folders: write beside, fsync, then swap.

Every output the package writes (result files, stores written by the command line,
run folders, the weights cache) goes through these helpers, so that an earlier
result is never destroyed before the new one is complete, a crash leaves either the
old or the new result in place, and temporary files are removed on every exit path
(exceptions and Ctrl-C included; only a SIGKILL or a power cut can leave one, and
its name says which process made it).

Examples
--------
>>> import os, tempfile
>>> from pathlib import Path
>>> target = Path(tempfile.mkdtemp()) / "result.txt"
>>> with replacing_file(target) as tmp:
...     _ = tmp.write_text("new")
>>> target.read_text(), sorted(os.listdir(target.parent))
('new', ['result.txt'])
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "partial_name",
    "remove_dead_partials",
    "fsync_path",
    "fsync_tree",
    "check_free",
    "remove_path",
    "replacing_file",
    "replace_dir",
    "pid_alive",
]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def partial_name(path: str | os.PathLike[str], pid: int | None = None) -> Path:
    """The temporary name written beside ``path``: ``<path>.partial-<pid>``.

    Examples
    --------
    >>> partial_name("out/run", pid=12).as_posix()
    'out/run.partial-12'
    """
    path = Path(path)
    return path.with_name(f"{path.name}.partial-{os.getpid() if pid is None else int(pid)}")


def remove_dead_partials(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries ``<path>.partial-<pid>`` that writers killed earlier left beside ``path``.

    Only those whose process is gone: a live writer's temporary is never touched.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> target = Path(tempfile.mkdtemp()) / "store.h5"
    >>> _ = partial_name(target, pid=2**22 + 12345).write_bytes(b"half")  # a writer that died
    >>> [p.name.split(".partial-")[0] for p in remove_dead_partials(target)]
    ['store.h5']
    """
    import glob

    path = Path(path)
    removed = []
    for found in path.parent.glob(f"{glob.escape(path.name)}.partial-*"):
        pid = found.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            remove_path(found)
            removed.append(found)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (the owner of a ``.partial-<pid>``).

    Examples
    --------
    >>> pid_alive(os.getpid())
    True
    """
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except (OverflowError, ValueError):
        return False
    return True


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's (or a folder's entries') data to the disk.

    Examples
    --------
    >>> import tempfile
    >>> fsync_path(tempfile.gettempdir())
    """
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    fd = os.open(os.fspath(path), flags)
    try:
        os.fsync(fd)
    except OSError as error:  # some file systems cannot fsync a folder
        if error.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike[str]) -> None:
    """fsync every file and folder under ``path`` (and ``path`` itself).

    Examples
    --------
    >>> import tempfile
    >>> fsync_tree(tempfile.mkdtemp())
    """
    root = Path(path)
    if root.is_dir():
        for folder, _, files in os.walk(root):
            for name in files:
                fsync_path(Path(folder) / name)
            fsync_path(folder)
    else:
        fsync_path(root)


def remove_path(path: str | os.PathLike[str]) -> None:
    """Remove a file or a folder tree if it exists (a temporary one, never a result).

    Examples
    --------
    >>> remove_path("/no/such/thing")
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def check_free(path: str | os.PathLike[str], overwrite: bool, what: str = "output",
               hint: str = "pass --overwrite to replace it or choose another name") -> Path:
    """Refuse an existing ``path`` unless ``overwrite``: call it before computing anything.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is false; the message says what to pass.
    IsADirectoryError
        ``path`` is a folder where a file is expected.

    Examples
    --------
    >>> import tempfile
    >>> existing = tempfile.mkstemp()[1]
    >>> check_free(existing, overwrite=False)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    FileExistsError: output ... exists; pass --overwrite to replace it
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{what} {path} exists; {hint}")
    return path


@contextlib.contextmanager
def replacing_file(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Write ``path`` through a temporary file beside it, swapped in only on success.

    Yields the temporary path (``<path>.partial-<pid>``); write the whole file there
    (a writer's own temporaries beside it, ``<tmp>.*``, are removed too).
    When the block ends normally the temporary file is fsynced and renamed over
    ``path`` (atomically), then the folder is fsynced.  On any exception, Ctrl-C
    included, the temporary file is removed and ``path`` is untouched.

    Parameters
    ----------
    path : path-like
        The final file.
    overwrite : bool
        Replace an existing ``path`` (checked before the block runs).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> target = Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = target.write_text("old")
    >>> try:
    ...     with replacing_file(target) as tmp:
    ...         _ = tmp.write_text("half")
    ...         raise RuntimeError("the writer failed")
    ... except RuntimeError:
    ...     pass
    >>> target.read_text(), [p.name for p in target.parent.iterdir()]
    ('old', ['a.txt'])
    """
    path = check_free(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    remove_path(tmp)
    remove_dead_partials(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp} for {path}")
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        remove_path(tmp)
        for leftover in tmp.parent.glob(f"{glob.escape(tmp.name)}.*"):  # what a writer made beside it
            remove_path(leftover)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")


def _carry(source: Path, target: Path, keep: Callable[[str], bool]) -> None:
    """Link (or copy) the entries of ``source`` that ``keep`` accepts into ``target``."""
    for entry in source.iterdir():
        if not keep(entry.name) or (target / entry.name).exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, target / entry.name)


def _link_or_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


def replace_dir(staging: str | os.PathLike[str], final: str | os.PathLike[str],
                carry: Callable[[str], bool] | None = None) -> Path:
    """Swap a complete ``staging`` folder in as ``final``; the old ``final`` goes only then.

    Everything under ``staging`` is fsynced first.  Entries of an existing ``final``
    that ``carry`` accepts (files that are not part of the result, e.g. a user's notes)
    are linked into ``staging`` before the swap.  The swap is atomic where the system
    can exchange two folders (Linux); elsewhere ``final`` is renamed aside, ``staging``
    renamed in, and only then the old folder removed, so a crash leaves one complete
    folder.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "run").mkdir(); _ = (root / "run" / "old.txt").write_text("old")
    >>> (root / "new").mkdir(); _ = (root / "new" / "new.txt").write_text("new")
    >>> sorted(p.name for p in replace_dir(root / "new", root / "run").iterdir())
    ['new.txt']
    >>> sorted(p.name for p in root.iterdir())
    ['run']
    """
    staging, final = Path(staging), Path(final)
    fsync_tree(staging)
    if not final.exists():
        os.rename(staging, final)
    else:
        if not final.is_dir():
            raise NotADirectoryError(f"{final} exists and is not a folder; choose another output folder")
        if carry is not None:
            _carry(final, staging, carry)
            fsync_tree(staging)
        if _exchange(staging, final):
            remove_path(staging)  # it now holds the old folder
        else:
            aside = final.with_name(f"{final.name}.old-{os.getpid()}")
            os.rename(final, aside)
            os.rename(staging, final)
            remove_path(aside)
    fsync_path(final.parent)
    return final

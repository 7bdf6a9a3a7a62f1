"""One BLAS / OpenMP thread for small dense work, without re-scanning the loaded libraries.

``threadpoolctl.threadpool_limits(...)`` builds a new controller on every call, which
walks every shared library the process has loaded: 35-40 ms each time in a process
that has torch, scipy and scikit-learn loaded, profiled, which is more than the
eigensolve it wraps (about 30 ms for 1,024 tokens).  :func:`single_thread` reuses one
controller per process (created on first use, rebuilt when new libraries appear).

Examples
--------
>>> import numpy as np
>>> with single_thread():
...     float(np.ones((2, 2)) @ np.ones(2) @ np.ones(2))
4.0
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["single_thread"]

_LOCK = threading.Lock()
_CONTROLLER: dict[str, Any] = {}


def _controller() -> Any:
    from threadpoolctl import ThreadpoolController

    with _LOCK:
        if "controller" not in _CONTROLLER:
            _CONTROLLER["controller"] = ThreadpoolController()
        return _CONTROLLER["controller"]


@contextlib.contextmanager
def single_thread(user_api: str | None = None) -> Iterator[None]:
    """Limit BLAS (``user_api="blas"``), OpenMP (``"openmp"``) or both (None) to one thread inside.

    Parameters
    ----------
    user_api : {None, "blas", "openmp"}
        Which thread pools to limit; None limits all of them.

    Examples
    --------
    >>> with single_thread("blas"):
    ...     pass
    """
    if user_api not in (None, "blas", "openmp"):
        raise ValueError(f"user_api must be None, 'blas' or 'openmp', got {user_api!r}")
    with _controller().limit(limits=1, user_api=user_api):
        yield

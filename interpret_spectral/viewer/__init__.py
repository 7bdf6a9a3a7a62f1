"""A self-contained HTML viewer of decompositions: ``interpret-spectral view OUT_DIR`` or :func:`write_viewer`.

Examples
--------
>>> from interpret_spectral.viewer import write_viewer
>>> write_viewer("out/demo")  # doctest: +SKIP
PosixPath('out/demo/viewer.html')
"""

from interpret_spectral.viewer.data import viewer_data
from interpret_spectral.viewer.page import Run, load_run, render_page, write_viewer

__all__ = ["write_viewer", "viewer_data", "load_run", "render_page", "Run"]

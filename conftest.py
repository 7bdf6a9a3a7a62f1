"""Doctest collection for the whole repository (pyproject: ``--doctest-modules``).

Every module is imported once, under the name users import it by.  The ``adapters/``
folder is installed as ``interpret_spectral.adapters`` (pyproject's ``package-dir``), so
pytest's own doctest collector would import its files a second time as a top-level
``adapters`` package: two copies of each adapter, each registering itself.  Here those
files are collected through their installed names instead.  Every docstring example runs
in a fresh temporary working directory, so examples that write files leave nothing behind.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest
from _pytest.doctest import DoctestItem, DoctestModule

ADAPTERS = Path(__file__).resolve().parent / "adapters"
INSTALLED_AS = "interpret_spectral.adapters"


class InstalledDoctestModule(DoctestModule):
    """Doctests of a file of ``adapters/``, imported as ``interpret_spectral.adapters.<name>``."""

    def _getobj(self) -> ModuleType:
        relative = self.path.resolve().relative_to(ADAPTERS).with_suffix("")
        parts = [part for part in relative.parts if part != "__init__"]
        return importlib.import_module(".".join([INSTALLED_AS, *parts]))


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path: Path, parent: pytest.Collector):  # type: ignore[no-untyped-def]
    collected = yield
    if file_path.suffix != ".py" or not file_path.resolve().is_relative_to(ADAPTERS):
        return collected
    return [
        InstalledDoctestModule.from_parent(parent, path=file_path) if type(node) is DoctestModule else node
        for node in collected
    ]


@pytest.fixture(autouse=True)
def _doctests_run_in_a_temporary_directory(request: pytest.FixtureRequest, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if isinstance(request.node, DoctestItem):
        monkeypatch.chdir(tmp_path)

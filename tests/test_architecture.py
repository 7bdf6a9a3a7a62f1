"""The architecture, as checks: the import contract and where backbone libraries may be imported.

``lint-imports`` (pyproject's ``[tool.importlinter]``; ``make test`` runs it first) checks
the layers, the adapters' imports and cycles.  It counts imports inside functions too,
where backbone libraries are allowed, so that rule is checked here: no module of the
package or of ``adapters/`` imports timm, diffusers, transformers, transformer_lens or
open_clip when it is imported (at module level, directly or through another module).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import interpret_spectral

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = ("timm", "diffusers", "transformers", "transformer_lens", "open_clip")


def _package_files() -> list[Path]:
    roots = [ROOT / "interpret_spectral", ROOT / "adapters"]
    return sorted(path for root in roots for path in root.rglob("*.py") if "__pycache__" not in path.parts)


def _module_level_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) of the imports that run on import: outside functions, classes' bodies included."""
    found: list[tuple[int, str]] = []
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            pending += node.orelse  # `if TYPE_CHECKING:` imports never run
        else:
            pending += ast.iter_child_nodes(node)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def test_the_scan_finds_module_level_imports_only() -> None:
    source = (
        "import timm\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import diffusers\n"
        "try:\n    from transformers import AutoModel\nexcept ImportError:\n    pass\n"
        "class A:\n    import open_clip\n    def f(self):\n        import transformer_lens\n"
        "def g():\n    import timm.layers\n"
    )
    assert sorted(_module_level_imports(ast.parse(source))) == [
        (1, "timm"), (2, "typing"), (6, "transformers"), (10, "open_clip"),
    ]


def test_no_module_imports_a_backbone_library_at_module_level() -> None:
    offending = [
        f"{path.relative_to(ROOT)}:{line}: import {module}"
        for path in _package_files()
        for line, module in _module_level_imports(ast.parse(path.read_text(), filename=str(path)))
        if module.split(".")[0] in BACKBONES
    ]
    assert not offending, (
        "backbone libraries are imported inside the functions that need them, never at module level:\n"
        + "\n".join(offending)
    )


def _all_module_names() -> list[str]:
    names = [interpret_spectral.__name__]
    for info in pkgutil.walk_packages(interpret_spectral.__path__, prefix="interpret_spectral."):
        names.append(info.name)
    adapters = importlib.import_module("interpret_spectral.adapters")
    names += [info.name for info in pkgutil.walk_packages(adapters.__path__, prefix="interpret_spectral.adapters.")]
    return sorted(set(names) - {"interpret_spectral.__main__", "interpret_spectral.cli.__main__"})


def test_importing_every_module_loads_no_backbone_library() -> None:
    """Catches what the scan cannot: a module-level import of a module that imports a backbone."""
    modules = _all_module_names()
    assert "interpret_spectral.adapters.timm_vit" in modules and "interpret_spectral.store.format" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {BACKBONES!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]", f"importing the package loaded {result.stdout.strip()}"


def test_the_import_contract_is_declared_for_every_layer() -> None:
    """The contract lint-imports checks names the package's layers and covers the adapters."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts = {contract["id"]: contract for contract in config["contracts"]}
    assert set(config["root_packages"]) == {"interpret_spectral", "adapters"}
    layers = contracts["layers"]
    assert layers["type"] == "layers" and layers["exhaustive"] is True
    assert layers["layers"][0] == "cli" and layers["layers"][-1] == "store"
    assert contracts["adapters"]["source_modules"] == ["adapters"]
    assert contracts["acyclic"]["type"] == "acyclic_siblings"


def test_lint_imports_passes() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    if not lint_imports.exists():
        pytest.fail(f"{lint_imports} is missing: pip install -c constraints.txt -e '.[dev]'")
    result = subprocess.run([str(lint_imports), "--no-cache"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

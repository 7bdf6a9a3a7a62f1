"""docs/extending.md runs: its Python blocks, executed in order, end with the rebuild check and the kit."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _python_blocks() -> list[str]:
    return [body for language, body in FENCE.findall(DOC.read_text()) if language == "python"]


def test_the_guide_has_a_worked_example_ending_with_the_rebuild_check() -> None:
    blocks = _python_blocks()
    assert len(blocks) >= 5
    assert "register_adapter" in "".join(blocks)
    rebuild = next(block for block in blocks if "capture_batch" in block)
    assert "output_tap" in rebuild and "assert" in rebuild.strip().splitlines()[-1]
    assert "check_adapter" in blocks[-1] and "assert" in blocks[-1].strip().splitlines()[-1]


def test_the_guide_code_runs() -> None:
    namespace: dict[str, object] = {"__name__": "extending_doc"}
    for number, block in enumerate(_python_blocks()):
        exec(compile(block, f"{DOC.name}[python block {number}]", "exec"), namespace)
    assert "TinyViTAdapter" in namespace and "arrays" in namespace
    assert namespace["report"].checks["rebuild"] == "passed"


BUILT_IN = {
    "timm-vit": "interpret_spectral.adapters.timm_vit:TimmViTAdapter",
    "hf-vision": "interpret_spectral.adapters.hf_vision:HFVisionAdapter",
    "diffusers": "interpret_spectral.adapters.diffusers_unet:DiffusersUNetAdapter",
    "transformer-lens": "interpret_spectral.adapters.lens:TransformerLensAdapter",
    "torch-mha": "interpret_spectral.adapters.mha:MultiheadAttentionAdapter",
    "path": "interpret_spectral.adapters.path:PathAdapter",
}


def test_built_in_adapters_are_entry_points_too() -> None:
    from importlib.metadata import entry_points

    from interpret_spectral.capture.registry import ENTRY_POINT_GROUP, get_adapter_class

    declared = {entry.name: entry.value for entry in entry_points(group=ENTRY_POINT_GROUP)}
    assert {name: declared.get(name) for name in BUILT_IN} == BUILT_IN
    for name in BUILT_IN:
        assert get_adapter_class(name) is next(
            entry for entry in entry_points(group=ENTRY_POINT_GROUP) if entry.name == name
        ).load()


def test_a_third_party_entry_point_is_discovered(tmp_path, monkeypatch) -> None:
    """A package declaring the entry point of the guide is found by adapter='auto' without importing it."""
    import sys

    import torch

    from interpret_spectral.capture import registry as sites

    package = tmp_path / "third_party_adapters.py"
    package.write_text(
        "import torch\n"
        "from interpret_spectral.adapters.path import PathAdapter\n"
        "class Gadget(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.q, self.k, self.v = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)\n"
        "    def forward(self, x):\n"
        "        return self.q(x) + self.k(x) + self.v(x)\n"
        "class GadgetAdapter(PathAdapter):\n"
        "    @classmethod\n"
        "    def matches(cls, model):\n"
        "        return isinstance(model, Gadget)\n"
        "    def __init__(self, model=None):\n"
        "        super().__init__(model, q='q', k='k', v='v', heads=2, grid=(3, 3))\n"
    )
    dist = tmp_path / "third_party_adapters-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: third-party-adapters\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[interpret_spectral.adapters]\ngadget = third_party_adapters:GadgetAdapter\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sites, "_REGISTRY", dict(sites._REGISTRY))
    monkeypatch.setattr(sites, "_ENTRY_POINTS_LOADED", False)
    assert "third_party_adapters" not in sys.modules
    assert "gadget" in sites.available_adapters()
    gadget = sys.modules["third_party_adapters"].Gadget()
    adapter = sites.resolve_adapter(gadget)
    assert adapter.name == "gadget"
    assert adapter.sites(torch.zeros(1, 9, 4))[0].grid == (3, 3)

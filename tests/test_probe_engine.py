"""The capture engine with a backbone-free toy model: batching, resume after SIGKILL, hooks, inputs."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from interpret_spectral import probe
from interpret_spectral.capture.engine import capture_batch
from interpret_spectral.store.reader import open_store, sample_ids
from toy_attention import ToyAdapter, ToyViT

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ToyViT().eval()


@pytest.fixture(scope="module")
def batch():
    return torch.randn(6, 3, 8, 12, generator=torch.Generator().manual_seed(1))


def test_rebuild_from_recorded_qkv(model, batch):
    adapter = ToyAdapter(model)
    sites = adapter.sites(batch)
    arrays, raw = capture_batch(adapter, batch, sites, extra_taps=[adapter.output_tap(s) for s in sites])
    for site in sites:
        q, k, v = (arrays[site.name][n] for n in "qkv")
        rebuilt = (torch.softmax(q @ k.transpose(-1, -2) * site.scale, -1) @ v).permute(0, 2, 1, 3).flatten(2)
        reference = raw[adapter.output_tap(site).key][0]
        assert (rebuilt - reference).norm() / reference.norm() < 1e-5


def test_three_batches_on_disk_equal_memory(model, batch, tmp_path):
    memory = probe(model, batch, adapter=ToyAdapter, batch_size=6, progress=False)
    disk = probe(model, batch, adapter=ToyAdapter, batch_size=2, out=tmp_path / "s.h5", progress=False)
    assert sample_ids(disk) == [str(i) for i in range(6)]
    for name in memory.children:
        np.testing.assert_allclose(disk[name]["q"].values, memory[name]["q"].values, rtol=1e-5, atol=1e-6)
        assert disk[name].attrs["grid_h"] == 2 and disk[name].attrs["grid_w"] == 3
        assert list(disk[name]["token_kind"].values[:2]) == ["cls", "patch"]
    assert disk.attrs["adapter"] == "toy"


def test_layers_and_features(model, batch):
    store = probe(model, batch[:2], adapter=ToyAdapter, layers=[-1], capture=("q", "k", "v", "features"), progress=False)
    assert list(store.children) == ["blocks.1"]
    assert store["blocks.1"]["features"].dims == ("sample", "token", "feature")
    assert store["blocks.1"]["features"].shape == (2, 7, 16)
    with pytest.raises(KeyError, match="no attention site matches"):
        probe(model, batch[:2], adapter=ToyAdapter, layers=["nope*"], progress=False)


def test_hooks_removed_after_exception(model, batch):
    calls = {"n": 0}

    def explode(_module, _args, _output):
        calls["n"] += 1
        raise RuntimeError("boom inside forward")

    handle = model.blocks[1].register_forward_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            probe(model, batch, adapter=ToyAdapter, progress=False)
    finally:
        handle.remove()
    assert calls["n"] == 1
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_images_and_folder_inputs(model, tmp_path):
    class ResizingToyAdapter(ToyAdapter):
        def preprocess(self, images):
            return torch.stack([
                torch.from_numpy(np.asarray(im.resize((12, 8)), dtype=np.float32)).permute(2, 0, 1) / 255
                for im in images
            ])

    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("b", "a"):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    store = probe(model, folder, adapter=ResizingToyAdapter, progress=False)
    assert sample_ids(store) == ["a", "b"]
    assert store["pixels"].shape == (2, 8, 12, 3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        probe(model, [folder / "missing.png"], adapter=ResizingToyAdapter, progress=False)


KILLER = textwrap.dedent(
    """
    import os, signal, sys, torch
    sys.path.insert(0, {tests!r})
    from toy_attention import ToyAdapter, ToyViT
    from interpret_spectral import probe

    class KillingAdapter(ToyAdapter):
        calls = 0
        def run(self, batch):
            KillingAdapter.calls += 1
            if KillingAdapter.calls == 4:  # dry run + two written batches, then die
                os.kill(os.getpid(), signal.SIGKILL)
            super().run(batch)

    torch.manual_seed(0)
    model = ToyViT().eval()
    batch = torch.randn(6, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    probe(model, batch, adapter=KillingAdapter, batch_size=2, out={out!r}, progress=False)
    """
)


def test_sigkill_between_batches_then_resume(model, batch, tmp_path):
    out = tmp_path / "killed.h5"
    script = KILLER.format(tests=str(TESTS), out=str(out))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr
    partial = open_store(out)
    assert sample_ids(partial) == ["0", "1", "2", "3"]
    partial.close()
    resumed = probe(model, batch, adapter=ToyAdapter, batch_size=2, out=out, resume=True, progress=False)
    assert sample_ids(resumed) == [str(i) for i in range(6)]
    reference = probe(model, batch, adapter=ToyAdapter, progress=False)
    for name in reference.children:
        np.testing.assert_allclose(resumed[name]["v"].values, reference[name]["v"].values, rtol=1e-5, atol=1e-6)


def test_resume_needs_out(model, batch):
    with pytest.raises(ValueError, match="resume=True needs out"):
        probe(model, batch, adapter=ToyAdapter, resume=True, progress=False)

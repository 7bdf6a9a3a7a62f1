"""The capture engine with a backbone-free toy model: batching, resume after SIGKILL, hooks, inputs."""

from __future__ import annotations

import dataclasses
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


def _resizing_adapter():
    class ResizingToyAdapter(ToyAdapter):
        def preprocess(self, images):
            return torch.stack([
                torch.from_numpy(np.asarray(im.resize((12, 8)), dtype=np.float32)).permute(2, 0, 1) / 255
                for im in images
            ])

    return ResizingToyAdapter


def test_store_records_original_sizes_preprocessing_and_completeness(model, tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for name, (h, w) in (("wide", (20, 40)), ("tall", (30, 16))):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    store = probe(model, paths, adapter=_resizing_adapter(), out=tmp_path / "s.h5", progress=False)
    assert store["original_height"].values.tolist() == [20, 30]
    assert store["original_width"].values.tolist() == [40, 16]
    assert "preprocessed by the" in store.attrs["preprocessing"]
    assert int(store.attrs["samples_requested"]) == 2 and int(store.attrs["complete"]) == 1
    store.close()


def test_overwrite_keeps_the_old_store_until_the_new_one_is_complete(model, batch, tmp_path):
    out = tmp_path / "s.h5"
    probe(model, batch[:2], adapter=ToyAdapter, out=out, progress=False).close()
    before = out.read_bytes()

    class FailingAdapter(ToyAdapter):
        calls = 0

        def run(self, b):
            FailingAdapter.calls += 1
            if FailingAdapter.calls == 3:  # two batches succeed, then the forward fails
                raise RuntimeError("forward failed")
            super().run(b)

    with pytest.raises(RuntimeError, match="forward failed"):
        probe(model, batch, adapter=FailingAdapter, out=out, overwrite=True, batch_size=1, progress=False)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]  # no temporary left behind
    probe(model, batch, adapter=ToyAdapter, out=out, overwrite=True, progress=False).close()
    assert sample_ids(open_store(out)) == [str(i) for i in range(len(batch))]


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
            if KillingAdapter.calls == 3:  # two written batches (the first also fixes the layout), then die
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


# -- NaN / infinity, absurd numbers, device and dtype -------------------------------------
def _poisoned(model: ToyViT, sample: int) -> torch.utils.hooks.RemovableHandle:
    """Make block 1's q NaN for one sample of every batch it sees."""

    def hook(_module, _args, output):
        output = output.clone()
        output[sample % len(output), 2] = float("nan")
        return output

    return model.blocks[1].q.register_forward_hook(hook)


def test_nonfinite_values_are_refused_naming_site_and_sample(model, batch, tmp_path):
    from interpret_spectral.capture.engine import NonFiniteError

    ids = [f"img{i}" for i in range(6)]
    handle = _poisoned(model, sample=1)
    try:
        with pytest.raises(NonFiniteError, match=r"site 'blocks.1', q: NaN or infinity .* sample\(s\) \['img1'\].*allow_nonfinite=True"):
            probe(model, batch, adapter=ToyAdapter, batch_size=2, sample_ids=ids, progress=False)
        with pytest.warns(RuntimeWarning, match=r"site 'blocks.1', q.*recorded as it is"):
            store = probe(model, batch, adapter=ToyAdapter, batch_size=2, sample_ids=ids, allow_nonfinite=True,
                          out=tmp_path / "nan.h5", progress=False)
    finally:
        handle.remove()
    q = store["blocks.1"]["q"].values
    assert np.isnan(q[1]).any() and np.isfinite(q[0]).all()


def test_values_beyond_float16_are_refused_with_store_dtype_float16(model, batch):
    from interpret_spectral.capture.engine import NonFiniteError

    def huge(_module, _args, output):
        return output * 1e6

    handle = model.blocks[0].v.register_forward_hook(huge)
    try:
        with pytest.raises(NonFiniteError, match="beyond float16's range.*store_dtype='float32'"):
            probe(model, batch[:2], adapter=ToyAdapter, store_dtype="float16", progress=False)
        store = probe(model, batch[:2], adapter=ToyAdapter, store_dtype="float32", progress=False)
    finally:
        handle.remove()
    assert np.isfinite(store["blocks.0"]["v"].values).all()


def test_absurd_scales_are_refused():
    from interpret_spectral.adapters.path import PathAdapter
    from interpret_spectral.capture.contract import check_scale

    with pytest.raises(ValueError, match=r"scale 1e\+30 is outside"):
        PathAdapter(q="a", k="b", v="c", heads=1, scale=1e30)
    for bad in (float("nan"), float("inf"), -1.0, 0.0, 1e-30):
        with pytest.raises(ValueError, match="outside"):
            check_scale(bad)

    class AbsurdToy(ToyAdapter):
        def sites(self, batch):
            return [dataclasses.replace(site, scale=1e30) for site in super().sites(batch)]

    with pytest.raises(ValueError, match=r"site 'blocks.0' from the 'toy' adapter: scale 1e\+30"):
        probe(ToyViT().eval(), torch.zeros(1, 3, 8, 8), adapter=AbsurdToy, progress=False)


def test_timm_never_suggests_image_size_zero():
    timm = pytest.importorskip("timm")
    from interpret_spectral.adapters.timm_vit import TimmViTAdapter

    model = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2)
    with pytest.raises(ValueError, match=r"use e.g. image_size=8\b"):
        TimmViTAdapter(model, image_size=5)


@pytest.mark.parametrize("compute", ["bfloat16", "float16"])
def test_half_precision_models_take_float32_inputs_and_store_as_asked(compute, batch):
    torch.manual_seed(0)
    reference_model = ToyViT().eval()
    half = ToyViT().eval()
    half.load_state_dict(reference_model.state_dict())
    store = probe(half, batch[:2], adapter=ToyAdapter, dtype=compute, store_dtype="float16", progress=False)
    assert next(half.parameters()).dtype == getattr(torch, compute)  # probe(dtype=) cast the model
    assert store["blocks.1"]["q"].dtype == np.float16 and store.attrs["compute_dtype"] == compute
    reference = probe(reference_model, batch[:2], adapter=ToyAdapter, progress=False)
    assert reference["blocks.1"]["q"].dtype == np.float32
    np.testing.assert_allclose(store["blocks.1"]["q"].values.astype(np.float32), reference["blocks.1"]["q"].values,
                               atol=0.1, rtol=0.05)
    again = probe(half, batch[:2], adapter=ToyAdapter, progress=False)  # a half model as it is: inputs cast to it
    assert again["blocks.1"]["q"].dtype == np.float32


def test_half_precision_model_passes_the_kit_at_half_precision_tolerance(batch):
    from interpret_spectral.testing import check_adapter

    torch.manual_seed(0)
    report = check_adapter(ToyViT().eval().to(torch.bfloat16), ToyAdapter, batch[:2], atol=2e-2, backends=("hooks",))
    assert report.checks["rebuild"] == "passed" and max(report.rebuild.values()) > 1e-5  # bfloat16 round-off


def test_inputs_follow_the_model_device(batch):
    from interpret_spectral.capture.placement import model_placement, to_model

    model = ToyViT().eval()
    adapter = ToyAdapter(model)
    assert model_placement(adapter) == (torch.device("cpu"), torch.float32)
    assert to_model(adapter, batch.double()).dtype == torch.float32
    assert to_model(adapter, torch.zeros(2, 3, dtype=torch.long)).dtype == torch.long  # token ids stay ints
    store = probe(model, batch[:1], adapter=ToyAdapter, device="cpu", progress=False)
    assert store.attrs["device"] == "cpu"
    with pytest.raises(ValueError, match="dtype must be one of"):
        probe(model, batch[:1], adapter=ToyAdapter, dtype="int8", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_model_takes_cpu_inputs(batch):
    torch.manual_seed(0)
    model = ToyViT().eval()
    cpu = probe(model, batch[:2], adapter=ToyAdapter, progress=False)
    gpu = probe(model, batch[:2], adapter=ToyAdapter, device="cuda", progress=False)
    assert gpu.attrs["device"].startswith("cuda")
    np.testing.assert_allclose(gpu["blocks.1"]["k"].values, cpu["blocks.1"]["k"].values, rtol=1e-4, atol=1e-5)


def test_raw_pixel_tensors_are_flagged(model):
    with pytest.warns(UserWarning, match="look like raw pixel values"):
        probe(model, torch.full((1, 3, 8, 12), 200.0), adapter=ToyAdapter, progress=False)

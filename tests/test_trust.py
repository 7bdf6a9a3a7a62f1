"""Trust over many runs: memory stays flat over many images, results stay bitwise for a seed."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import interpret_spectral as isp
from interpret_spectral.synthetic import planted_store


def _rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), in MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.fixture(scope="module")
def model():
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             embed_dim=32, num_heads=2, num_classes=0).eval()


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc (Linux)")
def test_memory_stays_flat_over_many_images(model, tmp_path):
    images = torch.rand(48, 3, 32, 32)
    isp.probe(model, images[:8], out=tmp_path / "warm.h5", batch_size=4, progress=False).close()
    gc.collect()
    before = _rss_mb()
    for round_ in range(3):  # 144 images in all, written to disk in batches of 4
        isp.probe(model, images, out=tmp_path / f"s{round_}.h5", batch_size=4, progress=False).close()
        gc.collect()
    growth = _rss_mb() - before
    assert growth < 40, f"resident memory grew by {growth:.1f} MB over 144 images"
    store = isp.open_store(tmp_path / "s2.h5")
    assert store.sizes["sample"] == 48
    store.close()


@pytest.mark.parametrize("solver", ["exact", "adam"])
def test_decompose_and_segment_are_bitwise_deterministic_for_a_seed(solver):
    store = planted_store(n_samples=2, grids=((6, 6), (3, 3)), seed=1)
    options = {"steps": 30} if solver == "adam" else {}

    def run():
        vectors = isp.decompose(store, graph="qk", n_components=4, solver=solver, seed=7, progress=False, **options)
        labels = isp.segment(vectors, k=3, seed=7)
        return vectors["vectors"].values, vectors["values"].values, labels.values

    first, second = run(), run()
    for a, b in zip(first, second):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b) and a.tobytes() == b.tobytes()
    assert np.isfinite(first[0]).all()

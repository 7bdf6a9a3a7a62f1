"""Paper-faithful diffusion sampling: timestep draws, fresh noise, the attention buffer, end to end."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from interpret_spectral.spectral.decompose import decompose
from interpret_spectral.spectral.sd_sampling import BufferedAdamSolver, DiffusionSampling, buffer_trace
from interpret_spectral.synthetic import planted_store


def test_timesteps_are_uniform_on_0_500() -> None:
    t = DiffusionSampling(n_draws=400, seed=3).timesteps()
    assert t.min() >= 0 and t.max() <= 500 and len(set(t.tolist())) == 400
    # chi-square over 10 equal bins of {0..500} (the last bin holds 51 values)
    counts = np.histogram(t, bins=np.r_[np.arange(0, 451, 50), 501])[0]
    assert counts.sum() == 400
    widths = np.r_[[50] * 9, 51]
    expected = 400 * widths / widths.sum()
    assert scipy.stats.chisquare(counts, expected).pvalue > 0.01
    # and the draws of many seeds pooled: a KS test against the discrete uniform's CDF
    pooled = np.concatenate([DiffusionSampling(n_draws=20, seed=s).timesteps() for s in range(50)])
    assert scipy.stats.kstest(pooled + np.random.default_rng(0).uniform(0, 1, pooled.size), "uniform",
                              args=(0, 501)).pvalue > 0.01
    # the first draw alone is uniform across seeds too (not only the set of draws)
    first = np.array([DiffusionSampling(n_draws=5, seed=s).timesteps()[0] for s in range(300)])
    assert scipy.stats.kstest(first + 0.5, "uniform", args=(0, 501)).pvalue > 0.01


def test_buffer_replacement_rate_and_oldest_slot() -> None:
    trace = buffer_trace(n_draws=1000, steps=4000, buffer_size=5, refresh=0.25, seed=7)
    assert trace.fresh[:5].all(), "the buffer fills first"
    rate = trace.fresh[5:].mean()
    assert scipy.stats.binomtest(int(trace.fresh[5:].sum()), trace.fresh[5:].size, 0.25).pvalue > 0.01, rate
    # a new set replaces the oldest: replay the buffer as a FIFO
    fifo: list[int] = []
    for used, fresh, evicted in zip(trace.used, trace.fresh, trace.replaced):
        if fresh:
            if len(fifo) == 5:
                assert evicted == fifo.pop(0)
            else:
                assert evicted == -1
            fifo.append(int(used))
        else:
            assert evicted == -1 and used in fifo
    new_sets = trace.used[trace.fresh]
    assert len(set(new_sets[:1000].tolist())) == 1000  # every recorded draw is new once before any repeats


def test_settings_checked() -> None:
    with pytest.raises(ValueError, match="refresh"):
        DiffusionSampling(refresh=0)
    with pytest.raises(ValueError, match="n_draws"):
        DiffusionSampling(t_max=3, n_draws=5)
    with pytest.raises(ValueError, match="below the scheduler"):
        DiffusionSampling(t_max=500).timesteps(limit=100)
    with pytest.raises(TypeError, match="accumulate"):
        BufferedAdamSolver(accumulate=3)


def test_buffered_adam_on_planted_timesteps() -> None:
    store = planted_store(n_samples=1, timesteps=(10, 200, 400))
    exact = decompose(store, n_components=3, progress=False)
    result = decompose(store, n_components=3, progress=False,
                       solver=DiffusionSampling(accumulate=4, buffer_size=2).solver(steps=400))
    assert result.attrs["solver"] == "adam-buffer"
    a = exact["vectors"].values.reshape(-1, 3)
    b = result["vectors"].values.reshape(-1, 3)
    b = b / np.linalg.norm(b, axis=0)
    # the buffered solver finds the exact solution's subspace (cosines of principal angles)
    cosines = np.linalg.svd(np.linalg.qr(a)[0].T @ np.linalg.qr(b)[0], compute_uv=False)
    assert cosines.min() > 0.9, cosines


def test_tiny_pipeline_faithful_sampling_end_to_end() -> None:
    pytest.importorskip("diffusers")
    from PIL import Image

    from interpret_spectral import probe
    from interpret_spectral.paper.models import tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    sampling = DiffusionSampling(n_draws=6, seed=1, accumulate=3)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)) for i in range(2)]
    store = probe(pipe, images, sampling=sampling, image_size=32, progress=False, batch_size=2)
    site = store.children[next(iter(store.children))]
    assert site["q"].sizes["timestep"] == 6
    assert site["timestep"].values.tolist() == sampling.timesteps().tolist()
    assert store.attrs["noise"] == "fresh"
    # fresh noise: the same store with one shared field differs
    shared = probe(pipe, images, timesteps=sampling.timesteps().tolist(), image_size=32, progress=False)
    first = next(iter(store.children))
    fresh_q, shared_q = store[first]["q"].values, shared[first]["q"].values
    assert fresh_q.shape == shared_q.shape
    for draw in range(6):  # every draw has its own noise field
        assert not np.allclose(fresh_q[:, draw], shared_q[:, draw], atol=1e-4)
    exact = decompose(store, n_components=3, progress=False)  # the mean operator over the draws
    assert exact.attrs["n_graphs"] % 6 == 0
    buffered = decompose(store, n_components=3, progress=False, solver=sampling.solver(steps=30))
    assert np.isfinite(buffered["vectors"].values).all()

"""Figures: eigenvectors as RGB, segments over the image, per-site contributions, the overview.

Synthetic decompositions with known values and a real photograph (scikit-image); no
model is run.  Figures are checked by their axes, the arrays they show and the size
of the PNG they write.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from matplotlib import _pylab_helpers
from PIL import Image

from interpret_spectral import viz
from interpret_spectral.store.decomposition import make_decomposition


def _decomposition(n_samples: int = 2, grid: int | tuple[int, int] = 8, n_components: int = 7) -> xr.Dataset:
    rng = np.random.default_rng(0)
    height, width = (grid, grid) if isinstance(grid, int) else grid
    vectors = rng.normal(size=(n_samples, height, width, n_components))
    values = np.sort(rng.random((n_samples, n_components)))[:, ::-1]
    return make_decomposition(vectors, values, [f"s{i}" for i in range(n_samples)], producer="test")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph (scikit-image's astronaut), 96 x 96."""
    skimage_data = pytest.importorskip("skimage.data")
    return np.asarray(Image.fromarray(skimage_data.astronaut()).resize((96, 96)))


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_eigenvector_rgb_min_max_normalises_each_component_into_its_channel() -> None:
    vectors = _decomposition()["vectors"].isel(sample=0)
    rgb = viz.eigenvector_rgb(vectors, (4, 1, 2))
    assert rgb.shape == (8, 8, 3)
    for channel, component in enumerate((4, 1, 2)):
        values = vectors.isel(component=component).values
        expected = (values - values.min()) / (values.max() - values.min())
        np.testing.assert_allclose(rgb[..., channel], expected, atol=1e-12)


def test_eigenvector_rgb_upsamples_and_keeps_a_constant_component_grey() -> None:
    array = np.zeros((4, 4, 3))
    array[:2, :, 0] = 1.0  # top half bright red
    array[..., 2] = 3.0  # constant component
    rgb = viz.eigenvector_rgb(array, (0, 1, 2), size=(16, 12))
    assert rgb.shape == (16, 12, 3)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    np.testing.assert_allclose(rgb[..., 2], 0.5)
    assert rgb[0, :, 0].min() == pytest.approx(1.0) and rgb[-1, :, 0].max() == pytest.approx(0.0)


def test_eigenvector_rgb_refuses_bad_components() -> None:
    vectors = _decomposition()["vectors"].isel(sample=0)
    with pytest.raises(ValueError, match="exactly three"):
        viz.eigenvector_rgb(vectors, (0, 1))
    with pytest.raises(ValueError, match="out of range"):
        viz.eigenvector_rgb(vectors, (0, 1, 7))
    with pytest.raises(ValueError, match="one sample"):
        viz.eigenvector_rgb(_decomposition()["vectors"], (0, 1, 2))


def test_plot_eigenvectors_has_one_panel_per_triple_plus_the_image(tmp_path, photo: np.ndarray) -> None:
    managers = _pylab_helpers.Gcf.get_num_fig_managers()
    decomposition = _decomposition()
    path = tmp_path / "eig.png"
    figure = viz.plot_eigenvectors(decomposition, sample="s1", image=photo, start=1, n_groups=2, path=path)
    assert len(figure.axes) == 3
    shown = [ax.get_images()[0].get_array() for ax in figure.axes]
    assert all(np.asarray(a).shape == (96, 96, 3) for a in shown)
    np.testing.assert_array_equal(np.asarray(shown[0]), photo)
    expected = viz.eigenvector_rgb(decomposition["vectors"].isel(sample=1), (4, 5, 6), (96, 96))
    np.testing.assert_allclose(np.asarray(shown[2]), expected)
    values = decomposition["values"].values[1]
    assert [ax.get_title() for ax in figure.axes[1:]] == [
        "components 1, 2, 3\n\u03bb = " + ", ".join(f"{values[c]:.3g}" for c in (1, 2, 3)),
        "components 4, 5, 6\n\u03bb = " + ", ".join(f"{values[c]:.3g}" for c in (4, 5, 6)),
    ]
    assert figure.get_suptitle() == "image s1"
    width = round(viz.PANEL_INCHES * 3 * viz.DPI)
    assert _png_size(path) == (width, round((viz.PANEL_INCHES + 0.4) * viz.DPI))
    # No pyplot figure manager was created: nothing leaks into matplotlib's global state.
    assert _pylab_helpers.Gcf.get_num_fig_managers() == managers


def test_plot_eigenvectors_without_image_and_with_explicit_groups() -> None:
    figure = viz.plot_eigenvectors(_decomposition(), groups=[(0, 1, 2), (2, 3, 4), (6, 5, 4), (0, 0, 0)])
    assert len(figure.axes) == 4
    assert all(np.asarray(ax.get_images()[0].get_array()).shape == (8, 8, 3) for ax in figure.axes)
    with pytest.raises(ValueError, match="do not fill one RGB triple"):
        viz.plot_eigenvectors(_decomposition(n_components=3), start=1)
    with pytest.raises(KeyError, match="no sample 'nope'"):
        viz.plot_eigenvectors(_decomposition(), sample="nope")


def test_overlay_segments_colours_each_segment_and_whitens_boundaries() -> None:
    image = np.full((8, 8, 3), 100, np.uint8)
    labels = np.array([[0, 0], [1, 2]])  # upsampled to 4 x 4 blocks
    out = viz.overlay_segments(image, labels, alpha=1.0)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    inner = {tuple(out[1, 1]), tuple(out[6, 1]), tuple(out[6, 6])}
    assert len(inner) == 3 and (255, 255, 255) not in inner  # three distinct segment colours
    np.testing.assert_array_equal(out[4, 1], [255, 255, 255])  # first row of segment 1: a boundary
    np.testing.assert_array_equal(out[6, 4], [255, 255, 255])  # first column of segment 2: a boundary
    untouched = viz.overlay_segments(image, np.zeros((2, 2), int), alpha=0.0)
    np.testing.assert_array_equal(untouched, image)
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay_segments(image, labels, alpha=2.0)


def test_plot_segments_shows_the_image_and_the_overlay(tmp_path, photo: np.ndarray) -> None:
    labels = xr.DataArray(
        np.repeat(np.arange(4), 16).reshape(1, 8, 8), dims=("sample", "y", "x"),
        coords={"sample": ["s0"], "k": ("sample", [4])},
    )
    figure = viz.plot_segments(labels, photo, sample="s0", path=tmp_path / "seg.png")
    assert len(figure.axes) == 2
    overlay = np.asarray(figure.axes[1].get_images()[0].get_array())
    np.testing.assert_array_equal(overlay, viz.overlay_segments(photo, labels.isel(sample=0)))
    assert figure.axes[1].get_title() == "segments (k=4)" and figure.get_suptitle() == "image s0"
    assert _png_size(tmp_path / "seg.png") == (round(viz.PANEL_INCHES * 2 * viz.DPI), round((viz.PANEL_INCHES + 0.4) * viz.DPI))


def test_plot_site_contributions_is_a_site_by_head_mean(tmp_path) -> None:
    rng = np.random.default_rng(1)
    sites = ["blocks.0.attn", "blocks.1.attn", "blocks.2.attn"]
    data = rng.random((2, 3, 4, 5))
    data[:, 2, 3] = np.nan  # a site with fewer heads
    contributions = xr.DataArray(data, dims=("sample", "site", "head", "component"), coords={"site": sites})
    figure = viz.plot_site_contributions(contributions, path=tmp_path / "c.png")
    heat_map = figure.axes[0]
    assert len(figure.axes) == 2  # the heat map and its colour bar
    with warnings.catch_warnings():  # the missing head is NaN on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmean(data, axis=(0, 3))
    np.testing.assert_allclose(heat_map.get_images()[0].get_array(), expected)
    assert np.isnan(expected[2, 3])
    assert [t.get_text() for t in heat_map.get_yticklabels()] == sites
    assert "sample, component" in heat_map.get_title()
    _png_size(tmp_path / "c.png")
    with pytest.raises(ValueError, match="'site' and 'head'"):
        viz.plot_site_contributions(contributions.rename(head="h"))


def test_plot_overview_writes_rows_of_segments_and_components(tmp_path, photo: np.ndarray) -> None:
    qk, vv = _decomposition(), _decomposition(n_components=10)
    labels = xr.DataArray(np.zeros((2, 8, 8), np.int32), dims=("sample", "y", "x"))
    labels[:, 4:] = 1
    path = tmp_path / "overview.png"
    figure = viz.plot_overview(photo, {"QK": qk, "VV": vv}, {"QK": labels}, sample=1, start=1, n_groups=2, path=path)
    assert len(figure.axes) == 6
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[0] == "QK: segments (k=2)" and titles[3] == "VV"
    assert titles[5].startswith("VV: components 4, 5, 6\n\u03bb = ") and figure.get_suptitle() == "image s1"
    # two rows of panels, and room for the title (the image id)
    assert _png_size(path) == (round(viz.PANEL_INCHES * 3 * viz.DPI), round((viz.PANEL_INCHES * 2 + 0.3) * viz.DPI))
    with pytest.raises(ValueError, match="no decomposition"):
        viz.plot_overview(photo, {"QK": qk}, {"VV": labels})


def test_store_image_reads_the_pixels_of_a_sample() -> None:
    pixels = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    tree = xr.DataTree(xr.Dataset({"pixels": (("sample", "y", "x", "rgb"), pixels)}, coords={"sample": ["a", "b"]}))
    np.testing.assert_array_equal(viz.store_image(tree, "b"), pixels[1])
    with pytest.raises(ValueError, match="no pixels"):
        viz.store_image(xr.DataTree(xr.Dataset(coords={"sample": ["a"]})))


@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
def test_figures_are_saved_by_suffix_at_the_asked_dpi(tmp_path, suffix: str) -> None:
    path = tmp_path / f"eig{suffix}"
    viz.plot_eigenvectors(_decomposition(), n_groups=1, path=path, dpi=80)
    head = path.read_bytes()[:64]
    if suffix == ".png":
        assert _png_size(path) == (round(viz.PANEL_INCHES * 80), round((viz.PANEL_INCHES + 0.4) * 80))
    elif suffix == ".pdf":
        assert head.startswith(b"%PDF")
    else:
        assert b"<svg" in path.read_bytes()[:2000]


def test_default_dpi_is_150_and_bad_paths_are_refused(tmp_path) -> None:
    assert viz.DPI == 150
    viz.plot_eigenvectors(_decomposition(), n_groups=1, path=tmp_path / "eig.png")
    assert _png_size(tmp_path / "eig.png") == (round(viz.PANEL_INCHES * 150), round((viz.PANEL_INCHES + 0.4) * 150))
    with pytest.raises(ValueError, match="figure format"):
        viz.plot_eigenvectors(_decomposition(), n_groups=1, path=tmp_path / "eig.jpeg")
    with pytest.raises(ValueError, match="dpi"):
        viz.plot_eigenvectors(_decomposition(), n_groups=1, path=tmp_path / "eig.png", dpi=0)


def test_two_to_one_grids_and_images(tmp_path) -> None:
    """A 4 x 8 grid (2:1) over a 48 x 96 image: the maps keep the aspect, figures size their panels to it."""
    from interpret_spectral import segment

    decomposition = _decomposition(grid=(4, 8))
    image = np.zeros((48, 96, 3), np.uint8)
    image[:, 48:] = 255
    rgb = viz.eigenvector_rgb(decomposition["vectors"].isel(sample=0), (0, 1, 2), size=(48, 96))
    assert rgb.shape == (48, 96, 3)
    figure = viz.plot_eigenvectors(decomposition, image=image, n_groups=2, path=tmp_path / "wide.png")
    assert [np.asarray(ax.get_images()[0].get_array()).shape for ax in figure.axes] == [(48, 96, 3)] * 3
    width, height = _png_size(tmp_path / "wide.png")
    assert (width, height) == (round(viz.PANEL_INCHES * 3 * viz.DPI), round((viz.PANEL_INCHES * 0.5 + 0.4) * viz.DPI))
    labels = segment(decomposition, k=2)
    assert labels.shape == (2, 4, 8)
    overlay = viz.overlay_segments(image, labels.isel(sample=0))
    assert overlay.shape == (48, 96, 3)
    figure = viz.plot_segments(labels, image, sample=1, path=tmp_path / "wide_seg.svg")
    assert figure.get_suptitle() == "image s1"
    figure = viz.plot_overview(image, {"QK": decomposition}, {"QK": labels}, n_groups=1, path=tmp_path / "o.pdf")
    assert np.asarray(figure.axes[1].get_images()[0].get_array()).shape == (48, 96, 3)

"""Figures: eigenvectors as RGB, segments over the image, per-site contributions.

Every function builds a :class:`matplotlib.figure.Figure` directly (never through
``pyplot``, so nothing is left in matplotlib's global state and no GUI backend is
touched), returns it, and writes it when ``path`` is given: PNG, PDF or SVG by the
path's suffix, at ``dpi`` (default 150).  Titles carry the image id and the
eigenvalues of the components shown; grids and images need not be square.

- :func:`plot_eigenvectors`: components three at a time as the R, G and B channels
  of one picture (the paper's Figures 5 and 6), each channel min-max normalised and
  upsampled bilinearly to the image;
- :func:`plot_segments`: the image, and the image with segment colours and
  boundaries over it;
- :func:`plot_site_contributions`: how well each site's and head's graph agrees with
  the solution, as a site x head heat map of Rayleigh quotients;
- :func:`plot_overview`: one figure for several decompositions of one image (the
  demo's figure): per graph, its segments and its first components.

The helpers :func:`eigenvector_rgb`, :func:`overlay_segments` and :func:`store_image`
return plain arrays for users who compose their own figures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from interpret_spectral.store.decomposition import as_vectors

__all__ = [
    "eigenvector_rgb",
    "overlay_segments",
    "store_image",
    "plot_eigenvectors",
    "plot_segments",
    "plot_site_contributions",
    "plot_overview",
]

#: Inches per panel of the figures below.
PANEL_INCHES = 2.6
#: Default resolution of saved figures (pixels per inch).
DPI = 150
#: File formats by path suffix.
FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}


# -- arrays -----------------------------------------------------------------------------
def _select_sample(data: xr.DataArray, sample: int | str) -> xr.DataArray:
    """One sample of ``data`` by position or id (no-op without a ``sample`` dimension)."""
    if "sample" not in data.dims:
        return data
    if isinstance(sample, str):
        ids = [str(s) for s in data["sample"].values] if "sample" in data.coords else []
        if sample not in ids:
            raise KeyError(f"no sample {sample!r}; the samples are {ids[:10]}")
        return data.isel(sample=ids.index(sample))
    count = data.sizes["sample"]
    if not -count <= int(sample) < count:
        raise IndexError(f"sample {sample} is out of range for {count} samples")
    return data.isel(sample=int(sample))


def _sample_vectors(decomposition: xr.Dataset | xr.DataArray, sample: int | str) -> tuple[xr.DataArray, str | None]:
    """``(y, x, component)`` eigenvectors of one sample (read by ``as_vectors``) and its id."""
    vectors = _select_sample(as_vectors(decomposition), sample)
    sample_id = str(vectors["sample"].values) if "sample" in vectors.coords else None
    return vectors.transpose("y", "x", "component"), sample_id


def _eigenvalues(decomposition: xr.Dataset | xr.DataArray, sample: int | str) -> np.ndarray | None:
    """The eigenvalues of one sample, when the decomposition holds ``values``."""
    if not isinstance(decomposition, xr.Dataset) or "values" not in decomposition.data_vars:
        return None
    return np.asarray(_select_sample(decomposition["values"], sample).values, dtype=np.float64)


def _as_image(image: Any) -> np.ndarray:
    """``(H, W, 3)`` uint8 from a PIL image, an array or a DataArray."""
    if isinstance(image, xr.DataArray):
        image = image.values
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"an image must be (H, W, 3) RGB, got shape {array.shape}")
    array = array[..., :3]
    if array.dtype != np.uint8:
        scaled = array.astype(np.float64)
        if scaled.size and scaled.max() <= 1.0:
            scaled = scaled * 255.0
        array = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    return array


def _label_map(labels: xr.DataArray | np.ndarray, sample: int | str) -> np.ndarray:
    """``(y, x)`` integer labels of one sample from ``(sample, y, x)`` or ``(y, x)`` labels."""
    if isinstance(labels, xr.DataArray):
        return np.asarray(_select_sample(labels, sample).values)
    array = np.asarray(labels)
    if array.ndim == 3:
        if isinstance(sample, str):
            raise TypeError("select a sample of a numpy label stack by position, not by id")
        return array[int(sample)]
    return array


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(h, w, c)`` to ``(H, W, c)`` (``align_corners=False``)."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def store_image(store: xr.DataTree, sample: int | str = 0) -> np.ndarray:
    """The input image of one sample as the model saw it (the store's ``pixels``).

    Parameters
    ----------
    store : xarray.DataTree
        A store written from images (it then holds ``pixels (sample, y, x, rgb)``).
    sample : int or str
        Position or id of the sample.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8.

    Examples
    --------
    >>> image = store_image(store, 0)  # doctest: +SKIP
    >>> image.shape  # doctest: +SKIP
    (448, 448, 3)
    """
    if "pixels" not in store.ds.data_vars:
        raise ValueError(
            "the store holds no pixels (it was probed from tensors); pass the image yourself with image="
        )
    return _as_image(_select_sample(store.ds["pixels"], sample).values)


def eigenvector_rgb(
    vectors: xr.DataArray | np.ndarray,
    components: Sequence[int] = (0, 1, 2),
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Three components of one sample as an RGB picture (paper Figures 5 and 6).

    Each of the three components becomes one colour channel, min-max normalised to
    ``[0, 1]`` over the map (a constant map becomes 0.5), then the picture is
    upsampled bilinearly to ``size``.

    Parameters
    ----------
    vectors : xarray.DataArray or numpy.ndarray
        ``(y, x, component)`` of one sample.
    components : sequence of 3 int
        Positions of the components shown as red, green and blue.
    size : (int, int), optional
        ``(H, W)`` to upsample to; the grid size when None.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` float in ``[0, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> rgb = eigenvector_rgb(np.random.default_rng(0).normal(size=(4, 4, 5)), (1, 2, 3), size=(8, 8))
    >>> rgb.shape, float(rgb.min()) >= 0.0, float(rgb.max()) <= 1.0
    ((8, 8, 3), True, True)
    """
    if isinstance(vectors, xr.DataArray):
        if "sample" in vectors.dims:
            raise ValueError("eigenvector_rgb takes one sample: select it first, e.g. vectors.isel(sample=0)")
        vectors = vectors.transpose("y", "x", "component").values
    array = np.asarray(vectors, dtype=np.float64)
    if array.ndim != 3:
        raise ValueError(f"vectors of one sample must be (y, x, component), got shape {array.shape}")
    components = [int(c) for c in components]
    if len(components) != 3:
        raise ValueError(f"give exactly three components (red, green, blue), got {components}")
    n = array.shape[-1]
    bad = [c for c in components if not -n <= c < n]
    if bad:
        raise ValueError(f"components {bad} are out of range: the decomposition has {n} components")
    channels = array[..., components]
    low = channels.min(axis=(0, 1), keepdims=True)
    span = channels.max(axis=(0, 1), keepdims=True) - low
    rgb = np.where(span > 0, (channels - low) / np.where(span > 0, span, 1.0), 0.5)
    if size is not None and tuple(size) != rgb.shape[:2]:
        rgb = _resize(rgb, (int(size[0]), int(size[1])))
    return np.clip(rgb, 0.0, 1.0)


def _palette(n: int) -> np.ndarray:
    """``n`` distinct RGB colours in [0, 1] (matplotlib's tab20, then hsv beyond 20)."""
    from matplotlib import colormaps

    if n <= 20:
        return np.asarray(colormaps["tab20"].colors, dtype=np.float64)[:n]
    return np.asarray(colormaps["hsv"](np.linspace(0, 1, n, endpoint=False))[:, :3], dtype=np.float64)


def overlay_segments(image: Any, labels: xr.DataArray | np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend segment colours into an image and draw the segment boundaries in white.

    Parameters
    ----------
    image : array_like or PIL.Image.Image
        ``(H, W, 3)`` RGB.
    labels : xarray.DataArray or numpy.ndarray
        ``(h, w)`` integer labels of one sample, upsampled to ``(H, W)`` by nearest
        neighbour when smaller.
    alpha : float
        Weight of the segment colour, in ``[0, 1]``.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8.

    Examples
    --------
    >>> import numpy as np
    >>> out = overlay_segments(np.zeros((8, 8, 3), np.uint8), np.array([[0, 1], [1, 1]]))
    >>> out.shape, out.dtype.name
    ((8, 8, 3), 'uint8')
    """
    from interpret_spectral.segmentation.upsample import upsample_labels

    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    picture = _as_image(image)
    label_array = np.asarray(labels.values if isinstance(labels, xr.DataArray) else labels)
    if label_array.ndim != 2:
        raise ValueError(f"labels of one sample must be (y, x), got shape {label_array.shape}")
    if label_array.shape != picture.shape[:2]:
        label_array = upsample_labels(label_array, picture.shape[:2])
    ids, index = np.unique(label_array, return_inverse=True)
    colours = _palette(len(ids))[index.reshape(label_array.shape)]
    blended = (1.0 - alpha) * picture / 255.0 + alpha * colours
    boundary = np.zeros(label_array.shape, dtype=bool)
    boundary[:, 1:] |= label_array[:, 1:] != label_array[:, :-1]
    boundary[1:, :] |= label_array[1:, :] != label_array[:-1, :]
    blended[boundary] = 1.0
    return np.clip(np.round(blended * 255.0), 0, 255).astype(np.uint8)


# -- figures ----------------------------------------------------------------------------
def _figure(width: float, height: float) -> Figure:
    """A new constrained-layout figure of ``width`` x ``height`` inches (not registered with pyplot)."""
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _finish(
    figure: Figure, path: str | os.PathLike[str] | None, dpi: float = DPI, heading: str | None = None
) -> Figure:
    """Title ``figure`` with ``heading`` (when given), save it to ``path`` (PNG, PDF or SVG by
    its suffix) at ``dpi``, and return it."""
    if heading:
        figure.suptitle(heading, fontsize=10)
    if path is not None:
        suffix = os.path.splitext(os.fspath(path))[1].lower()
        if suffix not in FORMATS:
            raise ValueError(
                f"cannot tell the figure format of {os.fspath(path)!r}: end the path with one of {sorted(FORMATS)}"
            )
        if not float(dpi) > 0:
            raise ValueError(f"dpi must be positive, got {dpi}")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        figure.savefig(path, dpi=float(dpi), format=FORMATS[suffix])
    return figure


def _show(axes: Any, picture: np.ndarray, title: str) -> None:
    axes.imshow(picture, interpolation="nearest")
    axes.set_title(title, fontsize=9)
    axes.set_axis_off()


def _show_segments(
    axes: Any, picture: np.ndarray, labels: xr.DataArray | np.ndarray, sample: int | str, alpha: float = 0.5,
    name: str | None = None,
) -> None:
    """One sample's segments over ``picture``, titled with their number (after ``name``, when given)."""
    label_map = _label_map(labels, sample)
    title = f"segments (k={int(np.unique(label_map).size)})"
    _show(axes, overlay_segments(picture, label_map, alpha), f"{name}: {title}" if name else title)


def _default_groups(n_components: int, start: int, n_groups: int) -> list[tuple[int, int, int]]:
    groups = []
    first = start
    while len(groups) < n_groups and first + 3 <= n_components:
        groups.append((first, first + 1, first + 2))
        first += 3
    if not groups:
        raise ValueError(
            f"components {start}.. of a {n_components}-component decomposition do not fill one RGB triple; "
            "lower start= or decompose with more components"
        )
    return groups


def _component_title(group: Sequence[int], values: np.ndarray | None = None) -> str:
    """``components 1, 2, 3`` and, when known, their eigenvalues on a second line."""
    title = "components " + ", ".join(str(c) for c in group)
    if values is not None:
        title += "\n\u03bb = " + ", ".join(f"{values[c]:.3g}" for c in group)
    return title


def _aspect(shape: Sequence[int]) -> float:
    """Height over width of a picture, kept within 1:4 .. 4:1 for the panel size."""
    return float(np.clip(shape[0] / shape[1], 0.25, 4.0))


def _label_sample_id(labels: xr.DataArray | np.ndarray, sample: int | str) -> str | None:
    """The id of one sample of ``segment()``'s labels, when they carry sample ids."""
    if isinstance(labels, xr.DataArray) and "sample" in labels.dims and "sample" in labels.coords:
        return str(_select_sample(labels, sample)["sample"].values)
    return None


def _figure_title(title: str | None, sample_id: str | None) -> str | None:
    """The caller's title, else the image id."""
    if title:
        return title
    return f"image {sample_id}" if sample_id else None


def plot_eigenvectors(
    decomposition: xr.Dataset | xr.DataArray,
    sample: int | str = 0,
    image: Any = None,
    groups: Sequence[Sequence[int]] | None = None,
    start: int = 0,
    n_groups: int = 3,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
    dpi: float = DPI,
) -> Figure:
    """Eigenvectors of one sample, three at a time as RGB (paper Figures 5 and 6).

    Parameters
    ----------
    decomposition : xarray.Dataset or xarray.DataArray
        What ``decompose()`` returns (``vectors (sample, y, x, component)``).
    sample : int or str
        Position or id of the sample.
    image : array_like, optional
        The sample's image (e.g. :func:`store_image`); shown first, and the maps are
        upsampled to its size.  Without it the maps keep their grid size.
    groups : sequence of 3-sequences of int, optional
        Component triples to show; default: ``n_groups`` consecutive triples from
        ``start``.
    start, n_groups : int
        Where the default triples begin and how many there are.
    title : str, optional
        Figure title; default ``image <sample id>``.
    path, dpi
        Where to write the figure (PNG, PDF or SVG by the suffix) and at how many pixels
        per inch (default :data:`DPI`, 150).

    Returns
    -------
    matplotlib.figure.Figure
        One axes for the image (when given) and one per triple, titled with the
        components and (when the decomposition holds ``values``) their eigenvalues.

    Examples
    --------
    >>> fig = plot_eigenvectors(decompose(store), image=store_image(store))  # doctest: +SKIP
    >>> len(fig.axes)  # doctest: +SKIP
    4
    """
    vectors, sample_id = _sample_vectors(decomposition, sample)
    eigenvalues = _eigenvalues(decomposition, sample)
    n_components = vectors.sizes["component"]
    triples = [tuple(int(c) for c in g) for g in groups] if groups is not None else _default_groups(
        n_components, int(start), int(n_groups)
    )
    picture = None if image is None else _as_image(image)
    size = None if picture is None else picture.shape[:2]
    panels = len(triples) + (picture is not None)
    aspect = _aspect(picture.shape[:2] if picture is not None else (vectors.sizes["y"], vectors.sizes["x"]))
    figure = _figure(PANEL_INCHES * panels, PANEL_INCHES * aspect + 0.4)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    column = 0
    if picture is not None:
        _show(axes[0], picture, "image")
        column = 1
    values = vectors.values
    for triple, ax in zip(triples, axes[column:]):
        _show(ax, eigenvector_rgb(values, triple, size), _component_title(triple, eigenvalues))
    return _finish(figure, path, dpi, _figure_title(title, sample_id))


def plot_segments(
    labels: xr.DataArray | np.ndarray,
    image: Any,
    sample: int | str = 0,
    alpha: float = 0.5,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
    dpi: float = DPI,
) -> Figure:
    """The image beside the image with its segments over it.

    Parameters
    ----------
    labels : xarray.DataArray or numpy.ndarray
        What ``segment()`` returns, ``(sample, y, x)``, or one ``(y, x)`` map.
    image : array_like or PIL.Image.Image
        The sample's image ``(H, W, 3)``.
    sample : int or str
        Position or id of the sample in ``labels``.
    alpha : float
        Weight of the segment colours.
    title : str, optional
        Figure title; default ``image <sample id>`` when ``labels`` is a DataArray
        with sample ids.
    path, dpi
        Where to write the figure (PNG, PDF or SVG by the suffix) and at how many pixels
        per inch (default :data:`DPI`, 150).

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: the image and the overlay.

    Examples
    --------
    >>> fig = plot_segments(segment(decompose(store)), store_image(store))  # doctest: +SKIP
    >>> len(fig.axes)  # doctest: +SKIP
    2
    """
    picture = _as_image(image)
    figure = _figure(PANEL_INCHES * 2, PANEL_INCHES * _aspect(picture.shape[:2]) + 0.4)
    axes = figure.subplots(1, 2)
    _show(axes[0], picture, "image")
    _show_segments(axes[1], picture, labels, sample, alpha)
    return _finish(figure, path, dpi, _figure_title(title, _label_sample_id(labels, sample)))


def plot_site_contributions(
    contributions: xr.DataArray,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
    dpi: float = DPI,
) -> Figure:
    """A site x head heat map of how well each graph agrees with the solution.

    Parameters
    ----------
    contributions : xarray.DataArray
        Rayleigh quotients with dims ``site`` and ``head`` (what
        ``site_contributions()`` returns); any other dimension (sample, component,
        timestep) is averaged.  A quotient near the component's eigenvalue (near 1
        for a random-walk graph) means the site's graph supports the solution.
    title : str, optional
        Axes title; default names the averaged dimensions.
    path, dpi
        Where to write the figure (PNG, PDF or SVG by the suffix) and at how many pixels
        per inch (default :data:`DPI`, 150).

    Returns
    -------
    matplotlib.figure.Figure
        One heat map axes and its colour bar.

    Examples
    --------
    >>> fig = plot_site_contributions(site_contributions(store, decompose(store)))  # doctest: +SKIP
    """
    if not isinstance(contributions, xr.DataArray):
        raise TypeError(f"contributions must be an xarray DataArray, got {type(contributions).__name__}")
    missing = {"site", "head"} - set(contributions.dims)
    if missing:
        raise ValueError(f"contributions need dims 'site' and 'head', got {contributions.dims}")
    others = [d for d in contributions.dims if d not in ("site", "head")]
    table = contributions.mean(dim=others, skipna=True) if others else contributions
    table = table.transpose("site", "head")
    sites = [str(s) for s in table["site"].values] if "site" in table.coords else [str(i) for i in range(table.sizes["site"])]
    heads = [str(h) for h in table["head"].values] if "head" in table.coords else [str(i) for i in range(table.sizes["head"])]
    height = max(2.5, 0.28 * len(sites) + 1.2)
    width = max(3.5, 0.45 * len(heads) + 3.2)
    figure = _figure(width, height)
    ax = figure.subplots()
    image = ax.imshow(np.asarray(table.values, dtype=np.float64), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(sites)), sites, fontsize=7)
    ax.set_xticks(range(len(heads)), heads, fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("site")
    ax.set_title(title or ("Rayleigh quotient" + (f" (mean over {', '.join(others)})" if others else "")), fontsize=9)
    figure.colorbar(image, ax=ax, shrink=0.8)
    return _finish(figure, path, dpi)


def plot_overview(
    image: Any,
    decompositions: Mapping[str, xr.Dataset | xr.DataArray],
    labels: Mapping[str, xr.DataArray | np.ndarray] | None = None,
    sample: int | str = 0,
    start: int = 0,
    n_groups: int = 2,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
    dpi: float = DPI,
) -> Figure:
    """One row per decomposition of one image: its segments and its first components.

    Parameters
    ----------
    image : array_like or PIL.Image.Image
        The sample's image ``(H, W, 3)``.
    decompositions : mapping of str to Dataset
        Row name (e.g. ``"QK ('where')"``) to what ``decompose()`` returns.
    labels : mapping of str to labels, optional
        Segments per row name (what ``segment()`` returns); rows without one show
        the image.
    sample : int or str
        Position or id of the sample.
    start, n_groups : int
        Component triples shown per row: ``n_groups`` consecutive triples from ``start``.
    title : str, optional
        Figure title; default ``image <sample id>``.
    path, dpi
        Where to write the figure (PNG, PDF or SVG by the suffix) and at how many pixels
        per inch (default :data:`DPI`, 150).

    Returns
    -------
    matplotlib.figure.Figure
        ``len(decompositions)`` rows of ``1 + n_groups`` axes, component panels titled
        with their eigenvalues; the saved PNG is ``PANEL_INCHES * dpi * (1 + n_groups)``
        pixels wide.

    Examples
    --------
    >>> fig = plot_overview(store_image(store), {"QK": qk, "VV": vv}, {"QK": seg_qk, "VV": seg_vv})  # doctest: +SKIP
    """
    if not decompositions:
        raise ValueError("give at least one decomposition")
    labels = dict(labels or {})
    unknown = sorted(set(labels) - set(decompositions))
    if unknown:
        raise ValueError(f"labels for {unknown} have no decomposition; the rows are {sorted(decompositions)}")
    picture = _as_image(image)
    rows = len(decompositions)
    columns = 1 + int(n_groups)
    sample_id = _sample_vectors(next(iter(decompositions.values())), sample)[1]
    heading = _figure_title(title, sample_id)
    figure = _figure(PANEL_INCHES * columns, PANEL_INCHES * _aspect(picture.shape[:2]) * rows + (0.3 if heading else 0.0))
    axes = figure.subplots(rows, columns, squeeze=False)
    for row, (name, decomposition) in enumerate(decompositions.items()):
        vectors, _ = _sample_vectors(decomposition, sample)
        eigenvalues = _eigenvalues(decomposition, sample)
        triples = _default_groups(vectors.sizes["component"], int(start), int(n_groups))
        if name in labels:
            _show_segments(axes[row, 0], picture, labels[name], sample, name=name)
        else:
            _show(axes[row, 0], picture, name)
        for column, triple in enumerate(triples, start=1):
            _show(axes[row, column], eigenvector_rgb(vectors.values, triple, picture.shape[:2]),
                  f"{name}: {_component_title(triple, eigenvalues)}")
        for column in range(1 + len(triples), columns):
            axes[row, column].set_axis_off()
    return _finish(figure, path, dpi, heading)

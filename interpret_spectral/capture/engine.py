"""The capture engine: ``probe()`` records attention q, k, v into a store.

The flow of one probe: inputs are listed and read (:mod:`~interpret_spectral.capture.inputs`),
preprocessed by the adapter, put where the model is (:mod:`~interpret_spectral.capture.placement`),
run with the taps read (:mod:`~interpret_spectral.capture.tapping`), checked for NaN and
infinity, and written batch by batch into a store.  The adapter's correctness check is
:func:`~interpret_spectral.capture.rebuild.rebuild_errors` (re-exported here).
"""

from __future__ import annotations

import fnmatch
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from PIL import Image

from interpret_spectral.capture.contract import Adapter, AttentionSite, check_site
from interpret_spectral.capture.inputs import IMAGE_SUFFIXES, InputItem, list_inputs, load_image
from interpret_spectral.capture.placement import model_placement, place_model, to_model
from interpret_spectral.capture.rebuild import rebuild_errors
from interpret_spectral.capture.registry import resolve_adapter
from interpret_spectral.capture.tapping import capture_batch, unwrap
from interpret_spectral.store.format import all_finite
from interpret_spectral.store.remote import refuse_url
from interpret_spectral.store.writer import create_store
from interpret_spectral.store.zarr_store import is_zarr_path

__all__ = [
    "probe", "capture_batch", "rebuild_errors", "select_sites", "to_model", "model_placement", "NonFiniteError",
    "IMAGE_SUFFIXES",
]


# -- inputs ---------------------------------------------------------------------------
def _pixels(images: Sequence[Image.Image], batch: Any) -> np.ndarray | None:
    """The input images at the model's input resolution, uint8 (B, H, W, 3)."""
    if not isinstance(batch, torch.Tensor) or batch.ndim != 4:
        return None
    height, width = batch.shape[-2:]
    return np.stack([np.asarray(im.resize((width, height), Image.BICUBIC), dtype=np.uint8) for im in images])


class NonFiniteError(ValueError):
    """The model gave NaN or infinity at a site; the message names the site and the samples."""


_FLOAT16_MAX = float(np.finfo(np.float16).max)


def _check_finite(
    arrays: dict[str, dict[str, np.ndarray]], ids: Sequence[str], store_dtype: str, allow: bool
) -> None:
    for site, variables in arrays.items():
        for var, values in variables.items():
            flat = values.reshape(len(ids), -1)
            if all_finite(flat) and (store_dtype != "float16" or not flat.size
                                     or max(-float(flat.min()), float(flat.max())) <= _FLOAT16_MAX):
                continue  # the usual case, decided in one or three passes without a mask
            bad = ~np.isfinite(flat)
            why = "NaN or infinity"
            if store_dtype == "float16" and not bad.any():
                bad = np.abs(flat) > _FLOAT16_MAX
                why = f"values beyond float16's range (+-{_FLOAT16_MAX:.0f}), infinite once stored"
            if not bad.any():
                continue
            samples = [ids[i] for i in np.flatnonzero(bad.any(axis=1))]
            message = (
                f"site {site!r}, {var}: {why} in {int(bad.sum())} values of sample(s) {samples[:5]}"
                f"{' ...' if len(samples) > 5 else ''}"
            )
            if allow:
                warnings.warn(f"{message}; recorded as it is (allow_nonfinite=True)", RuntimeWarning, stacklevel=3)
                continue
            hint = (
                "store them with store_dtype='float32'"
                if "float16" in why
                else "check those inputs and the model (a float16 model can overflow: try dtype='float32')"
            )
            raise NonFiniteError(f"{message}; {hint}, or pass allow_nonfinite=True to record them anyway")


# -- site selection -------------------------------------------------------------------
def select_sites(sites: Sequence[AttentionSite], layers: Any) -> list[AttentionSite]:
    """Pick sites by forward index, name or glob pattern.

    Parameters
    ----------
    sites : sequence of AttentionSite
        All sites of the model, in forward order.
    layers : None, int, str or sequence of int / str
        ``None`` keeps every site; ints index the forward order (negative from the
        end); strings are site names or glob patterns such as ``"blocks.1*"``.

    Examples
    --------
    >>> s = [AttentionSite(f"b.{i}", f"b.{i}", i, 1, 1, 1.0, (1, 1), ("patch",)) for i in range(4)]
    >>> [x.name for x in select_sites(s, [0, -1])]
    ['b.0', 'b.3']
    """
    if layers is None:
        return list(sites)
    if isinstance(layers, (int, str)):
        layers = [layers]
    chosen: dict[str, AttentionSite] = {}
    names = [s.name for s in sites]
    for selector in layers:
        if isinstance(selector, (int, np.integer)):
            if not -len(sites) <= selector < len(sites):
                raise IndexError(f"layer index {selector} is out of range for {len(sites)} attention sites")
            site = sites[selector]
            chosen[site.name] = site
        elif isinstance(selector, str):
            matched = [s for s in sites if fnmatch.fnmatchcase(s.name, selector)]
            if not matched:
                raise KeyError(f"no attention site matches {selector!r}; the sites are: {', '.join(names)}")
            for site in matched:
                chosen[site.name] = site
        else:
            raise TypeError(f"layers must hold ints or strings, got {type(selector).__name__}")
    return [s for s in sites if s.name in chosen]


# -- the public entry point -----------------------------------------------------------
def _batches(items: Sequence[InputItem], size: int) -> Iterator[list[InputItem]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def probe(
    model: Any,
    inputs: Any,
    *,
    adapter: str | Adapter | type[Adapter] = "auto",
    capture: Sequence[str] = ("q", "k", "v"),
    layers: Any = None,
    out: str | os.PathLike[str] | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    store_dtype: Literal["float32", "float16"] = "float32",
    backend: Literal["hooks", "nnsight"] = "hooks",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    sample_ids: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
    allow_nonfinite: bool = False,
    **adapter_options: Any,
) -> xr.DataTree:
    """Record the attention q, k, v of ``model`` on ``inputs`` into a store.

    Parameters
    ----------
    model : object
        A model some adapter knows (timm ViT, Hugging Face vision encoder, diffusers
        pipeline, transformer-lens model, ``nn.MultiheadAttention`` model, or any model
        with ``adapter=PathAdapter(...)``), optionally wrapped in nnsight.
    inputs : tensor, list of PIL images or paths, or a folder
        A tensor is taken as model-ready (resized and normalised) and passed to the model
        unchanged, but for its device and dtype; images and paths are read with
        :func:`~interpret_spectral.capture.inputs.load_image` (16-bit, palette, CMYK,
        alpha and EXIF orientation handled) and preprocessed by the adapter.
    adapter : str, Adapter or Adapter subclass
        ``"auto"`` picks the adapter that knows ``model``.
    capture : sequence of str
        What to record per site: ``"q"``, ``"k"``, ``"v"`` and optionally
        ``"features"`` (the block's output tokens).
    layers : None, int, str or sequence
        Which sites to record (see :func:`select_sites`); all when None.
    out : path-like, optional
        Store to write batch by batch (flushed after each): an HDF5 file, or a zarr v3
        store (a folder) when the name ends in ``.zarr``; in memory when None.  A local
        path: a URL is refused (write locally, copy up, then ``open_store(URL)`` reads it).
    batch_size : int
        Samples per forward pass.
    device : str or torch.device, optional
        Move the model there first (in place, as ``model.to(device)``).  Inputs always
        follow the model's device.
    dtype : {"float32", "float16", "bfloat16"} or torch.dtype, optional
        Cast the model to this dtype first (in place).  Floating-point inputs are always
        cast to the model's dtype; a float16 or bfloat16 model works as it is.
    store_dtype : {"float32", "float16"}
        Storage dtype of q, k, v and features, whatever the model computed in.
    backend : {"hooks", "nnsight"}
        Read modules by forward hooks or by nnsight tracing; both give the same store.
    resume : bool
        Continue an interrupted ``out`` file: samples already in it are skipped.
    overwrite : bool
        Replace an existing ``out`` file, only once the new store is complete: it is
        written beside it and swapped in at the end, so a failed run leaves the old one.
    progress : bool
        Show a tqdm progress bar over batches.
    sample_ids : sequence of str, optional
        Ids of the samples (default: file stems, ``image-<i>``, or ``<i>`` for tensors).
    metadata : dict, optional
        Extra root attributes (JSON-able).
    allow_nonfinite : bool
        By default a NaN or infinity in what a site records (or a value that float16
        storage would turn infinite) stops the probe with :class:`NonFiniteError`, naming
        the site and the samples; True records it anyway, with a warning.
    **adapter_options
        Passed to the adapter, e.g. ``timesteps=[100, 500]`` for diffusion models,
        ``image_size=448, resize="short_side"`` for ViTs.

    Returns
    -------
    xarray.DataTree
        The store (lazily opened from ``out`` when given).

    Examples
    --------
    >>> import timm
    >>> from interpret_spectral import probe
    >>> model = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    >>> store = probe(model, torch.randn(2, 3, 224, 224), progress=False)
    >>> store["blocks.0.attn"]["q"].dims
    ('sample', 'head', 'token', 'channel')
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if store_dtype not in ("float32", "float16"):
        raise ValueError(f"store_dtype must be 'float32' or 'float16', got {store_dtype!r}")
    if resume and out is None:
        raise ValueError("resume=True needs out= (a file to continue)")
    refuse_url(out, "probe(out=...)")
    torch_model = unwrap(model)
    place_model(torch_model, device, dtype)
    bound = resolve_adapter(torch_model, adapter, **adapter_options)
    items, is_tensor = list_inputs(inputs, sample_ids)

    def prepare(chunk: list[InputItem]) -> tuple[Any, np.ndarray | None, list[tuple[int, int] | None]]:
        if is_tensor:
            tensor = torch.cat([item.source for item in chunk])
            _warn_if_unnormalised(tensor, [item.sample_id for item in chunk])
            return to_model(bound, tensor), None, [None] * len(chunk)
        images = [load_image(item.source) for item in chunk]
        batch = bound.preprocess(images)
        sizes: list[tuple[int, int] | None] = [(image.height, image.width) for image in images]
        return to_model(bound, batch), _pixels(images, batch), sizes

    # The first batch fixes the sites, feature widths and extra dims; what it captured is
    # written as the first batch (a resumed run captures its first sample only, to check).
    first_chunk = items[:1] if resume else items[:batch_size]
    first_batch, first_pixels, first_sizes = prepare(first_chunk)
    all_sites = [check_site(site, f"the {bound.name!r} adapter") for site in bound.sites(first_batch)]
    sites = select_sites(all_sites, layers)
    capture = tuple(capture)
    probe_arrays, _ = capture_batch(bound, first_batch, sites, capture, backend, model=model)
    feature_dims = (
        {name: int(arr["features"].shape[-1]) for name, arr in probe_arrays.items()} if "features" in capture else None
    )
    device_used, dtype_used = model_placement(bound)
    attrs = {
        **bound.describe(),
        "input_shape": list(first_batch.shape[1:]) if isinstance(first_batch, torch.Tensor) else None,
        "capture": ",".join(capture),
        "backend": backend,
        "compute_dtype": str(dtype_used).replace("torch.", "") if dtype_used is not None else "unknown",
        "device": str(device_used) if device_used is not None else "unknown",
        **(metadata or {}),
    }
    if is_zarr_path(out):  # a zarr v3 store (a folder *.zarr); zarr is imported only then
        from interpret_spectral.store.zarr_writer import create_zarr_store as make_store
    else:
        make_store = create_store
    writer = make_store(
        sites,
        path=out,
        capture=capture,
        extra_dims=bound.extra_dims(first_batch),
        feature_dims=feature_dims,
        attrs=attrs,
        dtype=store_dtype,
        pixels_shape=None if first_pixels is None else first_pixels.shape[1:3],
        resume=resume,
        overwrite=overwrite,
        samples_requested=len(items),
        preprocessing=_preprocessing_record(bound, is_tensor, first_batch, adapter_options),
    )
    done = set(writer.written)
    todo = [item for item in items if item.sample_id not in done]
    captured = {tuple(item.sample_id for item in first_chunk): (first_batch, first_pixels, first_sizes, probe_arrays)}
    shape = tuple(first_batch.shape[1:]) if isinstance(first_batch, torch.Tensor) else None
    try:
        bar = tqdm(total=len(todo), disable=not progress, desc="probe", unit="sample")
        with bar:
            for chunk in _batches(todo, batch_size):
                ids = [item.sample_id for item in chunk]
                reuse = captured.pop(tuple(ids), None)
                batch, pixels, original_sizes = reuse[:3] if reuse is not None else prepare(chunk)
                if shape is not None and isinstance(batch, torch.Tensor) and tuple(batch.shape[1:]) != shape:
                    raise ValueError(
                        f"samples {ids[:3]} give a model input of shape {tuple(batch.shape[1:])}, the store's first "
                        f"sample {shape}: one store holds one token grid per site; probe images of another "
                        "size or aspect ratio into a store of their own (or use the adapter's resize='square')"
                    )
                arrays = reuse[3] if reuse is not None else capture_batch(
                    bound, batch, sites, capture, backend, model=model)[0]
                captured.clear()  # the first batch is either written now or never
                numpy_arrays = {
                    name: {var: value.detach().to("cpu", torch.float32).numpy() for var, value in site_arrays.items()}
                    for name, site_arrays in arrays.items()
                }
                _check_finite(numpy_arrays, ids, store_dtype, allow_nonfinite)
                writer.append(ids, numpy_arrays, pixels, original_sizes=original_sizes)
                bar.update(len(chunk))
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def _preprocessing_record(bound: Adapter, is_tensor: bool, batch: Any, options: dict[str, Any]) -> str:
    """One line saying how inputs became the model's input, for the store's ``preprocessing`` attribute."""
    shape = list(batch.shape[1:]) if isinstance(batch, torch.Tensor) else None
    if is_tensor:
        return f"model-ready tensors given by the caller, used as they are (model input {shape})"
    settings = ", ".join(f"{key}={value!r}" for key, value in sorted(options.items())) or "adapter defaults"
    return (
        f"images read as 8-bit RGB (EXIF orientation applied, alpha composited on white, high bit depths "
        f"rescaled), then preprocessed by the {bound.name!r} adapter ({settings}); model input {shape}"
    )


UNNORMALISED_LIMIT = 50.0
"""A model-ready float tensor with values beyond this looks like raw pixels (0..255), not normalised ones."""


def _warn_if_unnormalised(tensor: torch.Tensor, ids: Sequence[str]) -> None:
    """Warn when a float tensor given as model-ready input holds values far outside any normalised range."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    largest = float(tensor.detach().abs().max())
    if largest > UNNORMALISED_LIMIT:
        warnings.warn(
            f"samples {list(ids)[:3]} are tensors with values up to {largest:g}: a tensor is taken as model-ready "
            "(resized and normalised), and these look like raw pixel values (0..255), far outside a normalised range; "
            "pass images (PIL or paths) to let the adapter normalise them, or normalise the tensor first",
            UserWarning, stacklevel=3,
        )

"""The capture engine: ``probe()`` records attention q, k, v into a store.

The adapter says *what* to read (:class:`~interpret_spectral.sites.Tap`); this
module reads it, by PyTorch forward hooks (the default) or by nnsight tracing, and
writes the assembled arrays batch by batch into a store.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from PIL import Image

from interpret_spectral.capture.contract import Adapter, AttentionSite, Tap

from interpret_spectral.capture.registry import resolve_adapter
from interpret_spectral.store.writer import create_store

__all__ = ["probe", "capture_batch", "rebuild_errors", "select_sites", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


# -- inputs ---------------------------------------------------------------------------
@dataclass
class _Item:
    sample_id: str
    source: Any  # a PIL image, a path, or a tensor slice


def _list_inputs(inputs: Any, ids: Sequence[str] | None) -> tuple[list[_Item], bool]:
    """Normalise ``inputs`` into items; returns (items, is_tensor)."""
    if isinstance(inputs, torch.Tensor):
        if inputs.ndim < 1 or len(inputs) == 0:
            raise ValueError("a tensor input must be a non-empty batch (first dimension = samples)")
        names = list(ids) if ids is not None else [str(i) for i in range(len(inputs))]
        items = [_Item(n, inputs[i : i + 1]) for i, n in enumerate(names)]
        if len(items) != len(inputs):
            raise ValueError(f"{len(names)} sample ids for {len(inputs)} samples")
        return items, True
    if isinstance(inputs, (str, os.PathLike)):
        folder = Path(inputs)
        if not folder.exists():
            raise FileNotFoundError(f"input {folder} does not exist; give a folder of images, a list of images or paths, or a tensor")
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            inputs = files
        else:
            inputs = [folder]
    if isinstance(inputs, Image.Image):
        inputs = [inputs]
    if not isinstance(inputs, Sequence) or isinstance(inputs, (str, bytes)):
        raise TypeError(
            f"inputs must be a tensor batch, a list of PIL images or paths, or a folder; got {type(inputs).__name__}"
        )
    if len(inputs) == 0:
        raise ValueError("no inputs given")
    items = []
    for i, source in enumerate(inputs):
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"image {path} does not exist")
            default = path.stem
        elif isinstance(source, Image.Image):
            default = f"image-{i}"
        else:
            raise TypeError(f"input {i} is a {type(source).__name__}; expected a PIL image or a path")
        items.append(_Item(default, source))
    if ids is not None:
        if len(ids) != len(items):
            raise ValueError(f"{len(ids)} sample ids for {len(items)} inputs")
        for item, name in zip(items, ids):
            item.sample_id = str(name)
    names = [item.sample_id for item in items]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"sample ids must be unique, repeated: {dupes[:5]}; pass sample_ids=")
    return items, False


def _load_image(source: Any) -> Image.Image:
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    with Image.open(source) as image:
        return image.convert("RGB")


def _pixels(images: Sequence[Image.Image], batch: Any) -> np.ndarray | None:
    """The input images at the model's input resolution, uint8 (B, H, W, 3)."""
    if not isinstance(batch, torch.Tensor) or batch.ndim != 4:
        return None
    height, width = batch.shape[-2:]
    return np.stack([np.asarray(im.resize((width, height), Image.BICUBIC), dtype=np.uint8) for im in images])


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


# -- tapping --------------------------------------------------------------------------
def _first(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return value[0]
    return value


@contextlib.contextmanager
def _hooks(module: torch.nn.Module, taps: Sequence[Tap]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Forward hooks that collect every tap; removed on every exit path."""
    collected: dict[str, list[torch.Tensor]] = defaultdict(list)
    handles = []
    try:
        for tap in taps:
            target = module.get_submodule(tap.module) if tap.module else module
            if tap.port == "output":
                def hook(_mod, _args, output, key=tap.key):
                    collected[key].append(_first(output).detach())
                handles.append(target.register_forward_hook(hook))
            else:
                def pre_hook(_mod, args, kwargs, key=tap.key):
                    value = args[0] if args else next(iter(kwargs.values()))
                    collected[key].append(value.detach())
                handles.append(target.register_forward_pre_hook(pre_hook, with_kwargs=True))
        yield collected
    finally:
        for handle in handles:
            handle.remove()


def _run_nnsight(adapter: Adapter, batch: Any, taps: Sequence[Tap], model: Any) -> dict[str, list[torch.Tensor]]:
    try:
        from nnsight import NNsight
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("backend='nnsight' needs nnsight: pip install 'interpret-spectral[nnsight]'") from error
    if not adapter.single_forward:
        raise ValueError(
            f"adapter {adapter.name!r} runs several forward passes per batch; use backend='hooks' with it"
        )
    wrapped = model if _is_nnsight(model) else NNsight(adapter.model_module())
    args, kwargs = adapter.call_args(batch)
    # nnsight's cache reads modules in whatever order they run, unlike envoy access,
    # which must follow execution order.
    paths = list(dict.fromkeys(tap.module for tap in taps))
    names = [f"model.{path}" if path else "model" for path in paths]
    with torch.no_grad(), wrapped.trace(*args, **kwargs) as tracer:
        cache = tracer.cache(
            modules=names, device=None, include_inputs=any(tap.port == "input" for tap in taps)
        )
    result = {}
    for tap in taps:
        entry = cache[f"model.{tap.module}" if tap.module else "model"]
        value = entry.output if tap.port == "output" else entry.input
        result[tap.key] = [_first(value).detach()]
    return result


def _is_nnsight(model: Any) -> bool:
    """Whether ``model`` is an nnsight wrapper (``NNsight``, ``LanguageModel``, ``DiffusionModel``).

    Every nnsight wrapper is an ``Envoy``; torch modules inside nnsight are not.
    """
    import sys

    if "nnsight" not in sys.modules:
        return False
    from nnsight import Envoy

    return isinstance(model, Envoy)


def _unwrap(model: Any) -> Any:
    """The torch model inside an nnsight wrapper (``NNsight``, ``LanguageModel``, ...)."""
    if _is_nnsight(model):
        inner = getattr(model, "_module", None)  # nnsight >= 0.5
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "_model", None)  # older nnsight
        if not isinstance(inner, torch.nn.Module):
            raise TypeError(f"cannot find the torch model inside {type(model).__name__}")
        return inner
    return model


def capture_batch(
    adapter: Adapter,
    batch: Any,
    sites: Sequence[AttentionSite],
    capture: Sequence[str] = ("q", "k", "v"),
    backend: Literal["hooks", "nnsight"] = "hooks",
    extra_taps: Sequence[Tap] = (),
    model: Any = None,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, list[torch.Tensor]]]:
    """Run one model-ready batch and return the assembled arrays per site.

    Parameters
    ----------
    adapter : Adapter
        The model's adapter.
    batch : object
        A model-ready batch (what :meth:`Adapter.preprocess` returns).
    sites : sequence of AttentionSite
        The sites to read.
    capture : sequence of str
        Variables to assemble.
    backend : {"hooks", "nnsight"}
        How modules are read.
    extra_taps : sequence of Tap
        Further taps whose raw values are returned too (e.g. the output taps of
        the rebuild check).
    model : object, optional
        The user's model object (an nnsight wrapper is reused as it is).

    Returns
    -------
    arrays : dict
        ``arrays[site.name][var]`` as torch tensors.
    raw : dict
        Raw tapped values by :attr:`Tap.key`.

    Examples
    --------
    >>> arrays, raw = capture_batch(adapter, batch, adapter.sites(batch))  # doctest: +SKIP
    """
    taps: list[Tap] = []
    for site in sites:
        for tap in adapter.taps(site, capture):
            if tap not in taps:
                taps.append(tap)
    for tap in extra_taps:
        if tap not in taps:
            taps.append(tap)
    module = adapter.model_module()
    if backend not in ("hooks", "nnsight"):
        raise ValueError(f"backend must be 'hooks' or 'nnsight', got {backend!r}")
    with adapter.forward_context(batch):
        if backend == "hooks":
            with _hooks(module, taps) as collected:
                adapter.run(batch)
            tapped = dict(collected)
        else:
            tapped = _run_nnsight(adapter, batch, taps, model if model is not None else adapter.model)
    missing = [tap.key for tap in taps if not tapped.get(tap.key)]
    if missing:
        raise RuntimeError(
            f"adapter {adapter.name!r}: the forward pass never reached {missing[:3]}; "
            "the model's structure differs from what the adapter expects"
        )
    arrays = {site.name: adapter.assemble(site, tapped, capture) for site in sites}
    return arrays, tapped


def rebuild_errors(
    adapter: Adapter,
    batch: Any,
    mask: Callable[[int], torch.Tensor] | None = None,
    backend: Literal["hooks", "nnsight"] = "hooks",
    model: Any = None,
) -> dict[str, float]:
    """The adapter's correctness check: relative error of the attention rebuilt from q, k, v.

    ``softmax(q k^T * scale) v``, computed in float64 from what the adapter records,
    is compared with what the layer's output projection received
    (:meth:`Adapter.output_tap`), per site; q/k/v with a timestep axis are compared at
    every timestep and the worst error is kept.  A correct adapter gives float
    round-off (about 1e-7).

    Parameters
    ----------
    adapter : Adapter
        An adapter bound to its model.
    batch : object
        A model-ready batch.
    mask : callable, optional
        ``mask(n)`` gives a boolean ``(n, n)`` mask of the scores to drop (True =
        masked), for causal models.
    backend : {"hooks", "nnsight"}
        How modules are read.
    model : object, optional
        The user's model object (an nnsight wrapper is traced as it is).

    Returns
    -------
    dict
        Site name to relative error (Frobenius norm).

    Examples
    --------
    >>> import timm, torch
    >>> from interpret_spectral import resolve_adapter
    >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    >>> errors = rebuild_errors(resolve_adapter(model), torch.randn(1, 3, 224, 224))
    >>> max(errors.values()) < 1e-5
    True
    """
    sites = adapter.sites(batch)
    out_taps = {site.name: adapter.output_tap(site) for site in sites}
    arrays, raw = capture_batch(adapter, batch, sites, extra_taps=list(out_taps.values()), backend=backend, model=model)
    errors = {}
    for site in sites:
        q, k, v = (arrays[site.name][name].double() for name in ("q", "k", "v"))
        used = raw[out_taps[site.name].key]
        if q.ndim == 4:  # no timestep axis: one call
            q, k, v = q[:, None], k[:, None], v[:, None]
        if q.shape[1] != len(used) or q.shape[2:] != (site.num_heads, site.num_tokens, site.head_dim):
            raise ValueError(
                f"site {site.name!r}: q has shape {tuple(q.shape)} for {len(used)} calls of the output "
                f"projection and {site.num_heads} heads x {site.num_tokens} tokens x {site.head_dim} channels"
            )
        worst = 0.0
        for step, reference in enumerate(used):
            scores = q[:, step] @ k[:, step].transpose(-1, -2) * site.scale
            if mask is not None:
                scores = scores.masked_fill(mask(site.num_tokens), float("-inf"))
            rebuilt = (torch.softmax(scores, dim=-1) @ v[:, step]).transpose(1, 2).flatten(2)
            reference = reference.double().reshape(rebuilt.shape)  # (B, N, H, D) taps flatten to (B, N, H*D)
            worst = max(worst, float((rebuilt - reference).norm() / reference.norm()))
        errors[site.name] = worst
    return errors


# -- the public entry point -----------------------------------------------------------
def _batches(items: Sequence[_Item], size: int) -> Iterator[list[_Item]]:
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
    dtype: Literal["float32", "float16"] = "float32",
    backend: Literal["hooks", "nnsight"] = "hooks",
    resume: bool = False,
    progress: bool = True,
    sample_ids: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
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
        unchanged; images and paths are preprocessed by the adapter.
    adapter : str, Adapter or Adapter subclass
        ``"auto"`` picks the adapter that knows ``model``.
    capture : sequence of str
        What to record per site: ``"q"``, ``"k"``, ``"v"`` and optionally
        ``"features"`` (the block's output tokens).
    layers : None, int, str or sequence
        Which sites to record (see :func:`select_sites`); all when None.
    out : path-like, optional
        HDF5 file to write batch by batch (flushed after each); in memory when None.
    batch_size : int
        Samples per forward pass.
    dtype : {"float32", "float16"}
        Storage dtype.
    backend : {"hooks", "nnsight"}
        Read modules by forward hooks or by nnsight tracing; both give the same store.
    resume : bool
        Continue an interrupted ``out`` file: samples already in it are skipped.
    progress : bool
        Show a tqdm progress bar over batches.
    sample_ids : sequence of str, optional
        Ids of the samples (default: file stems, ``image-<i>``, or ``<i>`` for tensors).
    metadata : dict, optional
        Extra root attributes (JSON-able).
    **adapter_options
        Passed to the adapter, e.g. ``timesteps=[100, 500]`` for diffusion models.

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

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if resume and out is None:
        raise ValueError("resume=True needs out= (a file to continue)")
    torch_model = _unwrap(model)
    bound = resolve_adapter(torch_model, adapter, **adapter_options)
    items, is_tensor = _list_inputs(inputs, sample_ids)

    def prepare(chunk: list[_Item]) -> tuple[Any, np.ndarray | None]:
        if is_tensor:
            return torch.cat([item.source for item in chunk]), None
        images = [_load_image(item.source) for item in chunk]
        batch = bound.preprocess(images)
        return batch, _pixels(images, batch)

    first_batch, first_pixels = prepare(items[:1])
    all_sites = bound.sites(first_batch)
    sites = select_sites(all_sites, layers)
    capture = tuple(capture)
    # One dry capture on the first sample fixes feature widths and extra dims.
    probe_arrays, _ = capture_batch(bound, first_batch, sites, capture, backend, model=model)
    feature_dims = (
        {name: int(arr["features"].shape[-1]) for name, arr in probe_arrays.items()} if "features" in capture else None
    )
    attrs = {
        **bound.describe(),
        "input_shape": list(first_batch.shape[1:]) if isinstance(first_batch, torch.Tensor) else None,
        "capture": ",".join(capture),
        "backend": backend,
        **(metadata or {}),
    }
    writer = create_store(
        sites,
        path=out,
        capture=capture,
        extra_dims=bound.extra_dims(first_batch),
        feature_dims=feature_dims,
        attrs=attrs,
        dtype=dtype,
        pixels_shape=None if first_pixels is None else first_pixels.shape[1:3],
        resume=resume,
    )
    done = set(writer.written)
    todo = [item for item in items if item.sample_id not in done]
    try:
        bar = tqdm(total=len(todo), disable=not progress, desc="probe", unit="sample")
        with bar:
            for chunk in _batches(todo, batch_size):
                batch, pixels = prepare(chunk)
                arrays, _ = capture_batch(bound, batch, sites, capture, backend, model=model)
                numpy_arrays = {
                    name: {var: value.detach().to("cpu", torch.float32).numpy() for var, value in site_arrays.items()}
                    for name, site_arrays in arrays.items()
                }
                writer.append([item.sample_id for item in chunk], numpy_arrays, pixels)
                bar.update(len(chunk))
    except BaseException:
        writer.abort()
        raise
    return writer.close()

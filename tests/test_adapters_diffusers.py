"""diffusers adapter: self-attention of the Stable Diffusion UNet, per timestep.

Tiny random-init models built from configs (no download): UNets with the SD 1.x block
layout and with group-norm self-attention, and a whole ``StableDiffusionPipeline``
(VAE, CLIP text encoder with a tokenizer written to ``tmp_path``, DDPM scheduler, UNet).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402
from interpret_spectral.capture.engine import rebuild_errors  # noqa: E402
from test_adapters_mha_path import REL_TOL, no_hooks_left  # noqa: E402

from interpret_spectral import probe  # noqa: E402
from interpret_spectral.adapters.diffusers_unet import DiffusersUNetAdapter  # noqa: E402
from interpret_spectral.capture.registry import resolve_adapter  # noqa: E402

TINY = dict(cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)


def _sd1_unet() -> diffusers.UNet2DConditionModel:
    """SD 1.x's block layout (3 cross-attention down blocks, 3 up blocks, 2 layers each) at tiny width."""
    return diffusers.UNet2DConditionModel(
        sample_size=16, block_out_channels=(16, 16, 32, 32), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, **TINY,
    ).eval()


def _group_norm_unet() -> diffusers.UNet2DConditionModel:
    """Group-norm self-attention (AttnDownBlock2D / AttnUpBlock2D) next to transformer blocks."""
    return diffusers.UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 32), layers_per_block=1,
        down_block_types=("AttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "AttnUpBlock2D"), **TINY,
    ).eval()


def _tokenizer(folder) -> transformers.CLIPTokenizer:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "cat</w>": 3, "a": 4, "c": 5, "t": 6}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=8)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> diffusers.StableDiffusionPipeline:
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        **TINY,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(16, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=16,
    )
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=7, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, steps_offset=1, clip_sample=False)
    pipeline = diffusers.StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=_tokenizer(tmp_path_factory.mktemp("tok")),
        unet=unet.eval(), scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _images(n: int, size: int = 20) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)) for _ in range(n)]


def test_sd1_layout_has_16_self_attention_sites_from_full_to_eighth_resolution() -> None:
    torch.manual_seed(0)
    unet = _sd1_unet()
    adapter = resolve_adapter(unet, timesteps=[10, 600])  # adapter="auto"
    assert isinstance(adapter, DiffusersUNetAdapter)
    latents = torch.randn(1, 4, 16, 12)  # non-square: rows and columns must not swap
    sites = adapter.sites(latents)
    assert len(sites) == 16 and all(s.name.endswith(".attn1") for s in sites)
    grids = [s.grid for s in sites]
    assert grids == [(16, 12)] * 2 + [(8, 6)] * 2 + [(4, 3)] * 2 + [(2, 2)] + [(4, 3)] * 3 + [(8, 6)] * 3 + [(16, 12)] * 3
    assert sites[6].name.startswith("mid_block") and [s.order for s in sites] == list(range(16))
    errors = rebuild_errors(adapter, latents)
    assert max(errors.values()) < REL_TOL, errors


def test_group_norm_self_attention_rebuild_over_timesteps() -> None:
    torch.manual_seed(0)
    unet = _group_norm_unet()
    adapter = DiffusersUNetAdapter(unet, timesteps=(10, 910), n_timesteps=3, scheduler=diffusers.DDPMScheduler())
    assert adapter.timesteps.tolist() == [10, 460, 910]
    latents = torch.randn(2, 4, 8, 8)
    sites = adapter.sites(latents)
    group_normed = [s.name for s in sites if unet.get_submodule(s.module).group_norm is not None]
    assert group_normed == ["down_blocks.0.attentions.0", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1"]
    errors = rebuild_errors(adapter, latents)
    assert max(errors.values()) < REL_TOL, errors
    store = probe(unet, latents, adapter=adapter, progress=False)
    q = store["down_blocks.0.attentions.0"]["q"]
    assert q.dims == ("sample", "timestep", "head", "token", "channel") and q.shape == (2, 3, 4, 64, 8)
    assert store["timestep"].values.tolist() == [10, 460, 910]
    assert not np.allclose(q.values[:, 0], q.values[:, 2])  # noise levels differ


def test_pipeline_end_to_end_stores_the_timesteps(pipe) -> None:
    adapter = resolve_adapter(pipe, timesteps=[10, 500, 990], seed=3)
    assert adapter.image_size == (16, 16)  # sample_size 8 x VAE factor 2
    store = probe(pipe, _images(3), timesteps=[10, 500, 990], seed=3, batch_size=2, progress=False)
    assert store["timestep"].values.tolist() == [10, 500, 990]
    names = list(store.children)
    assert names == [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
        "mid_block.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
    ]
    first = store[names[0]]
    # UNet2DConditionModel reads attention_head_dim as the number of heads: 8 heads of 32 / 8 channels
    assert first["q"].shape == (3, 3, 8, 64, 4) and (first.attrs["grid_h"], first.attrs["grid_w"]) == (8, 8)
    assert store[names[1]]["k"].shape == (3, 3, 8, 16, 4)
    assert store["pixels"].shape == (3, 16, 16, 3)
    assert store.attrs["adapter"] == "diffusers" and store.attrs["prompt"] == ""

    # The recorded q is the UNet's to_q on VAE latents noised by the scheduler, prompt "" as context.
    batch = adapter.preprocess(_images(3)[2:])
    seen = []
    handle = pipe.unet.get_submodule(names[0]).to_q.register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        with torch.no_grad():
            latents = pipe.vae.encode(batch).latent_dist.mean * pipe.vae.config.scaling_factor
            noise = torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(3))
            context = pipe.encode_prompt("", "cpu", 1, False)[0]
            t = torch.tensor([500])
            pipe.unet(pipe.scheduler.add_noise(latents, noise[None], t), t, encoder_hidden_states=context)
    finally:
        handle.remove()
    expected = seen[0].reshape(1, 64, 8, 4).transpose(1, 2)
    np.testing.assert_allclose(first["q"].values[2, 1], expected[0].numpy(), rtol=1e-5, atol=1e-5)

    errors = rebuild_errors(adapter, adapter.preprocess(_images(2)))
    assert max(errors.values()) < REL_TOL, errors


def test_path_adapter_traces_an_nnsight_diffusion_model(pipe, tmp_path) -> None:
    """nnsight's DiffusionModel, loaded offline from a saved tiny pipeline, read by module paths."""
    pytest.importorskip("nnsight")
    from nnsight.modeling.diffusion import DiffusionModel

    from interpret_spectral.adapters.path import PathAdapter

    pipe.save_pretrained(tmp_path / "pipe")
    model = DiffusionModel(str(tmp_path / "pipe"), dispatch=True)
    model.pipeline.set_progress_bar_config(disable=True)
    blocks = [f"unet.{name}" for name, m in pipe.unet.named_modules() if name.endswith("attn1")]
    spec = PathAdapter(
        q=[f"{b}.to_q" for b in blocks], k=[f"{b}.to_k" for b in blocks], v=[f"{b}.to_v" for b in blocks],
        out_proj=[f"{b}.to_out.0" for b in blocks], heads=8,
        # the pipeline starts from the given latents and runs the UNet once, unguided
        call=lambda latents: (([""] * len(latents),), dict(
            latents=latents, num_inference_steps=1, guidance_scale=1.0, output_type="latent")),
    )
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    by_nnsight = probe(model, latents, adapter=spec, backend="nnsight", batch_size=2, progress=False)
    by_hooks = probe(model, latents, adapter=spec, backend="hooks", batch_size=2, progress=False)
    # module order lists the mid block last; the sites follow the forward pass: down, mid, up
    assert blocks[3].startswith("unet.mid_block")
    assert list(by_nnsight.children) == [blocks[0], blocks[3], blocks[1], blocks[2]]
    assert by_nnsight[blocks[0]]["q"].shape == (3, 8, 64, 4)
    np.testing.assert_array_equal(by_nnsight[blocks[-1]]["v"].values, by_hooks[blocks[-1]]["v"].values)
    errors = rebuild_errors(spec.bind(model._module), latents[:2], backend="nnsight", model=model)
    assert max(errors.values()) < REL_TOL, errors


def test_exception_inside_forward_restores_processors_and_removes_hooks(pipe) -> None:
    from diffusers.models.attention_processor import AttnProcessor

    class Exploding:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
            raise RuntimeError("boom inside the UNet")

    unet = pipe.unet
    site = unet.get_submodule("up_blocks.1.attentions.0.transformer_blocks.0.attn1")
    cross = unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn2")
    own, cross_own = AttnProcessor(), cross.processor
    site.set_processor(own)  # a processor of the user's: it must come back
    cross.set_processor(Exploding())
    before = {name: m.processor for name, m in unet.named_modules() if hasattr(m, "set_processor")}
    try:
        with pytest.raises(RuntimeError, match="boom"):
            probe(pipe, _images(1), timesteps=[10, 20], progress=False)
        after = {name: m.processor for name, m in unet.named_modules() if hasattr(m, "set_processor")}
        assert all(after[name] is before[name] for name in before)
        assert site.processor is own
        assert no_hooks_left(unet) and no_hooks_left(pipe.vae)
    finally:
        cross.set_processor(cross_own)


def test_bare_unet_conditioning_and_errors() -> None:
    torch.manual_seed(0)
    unet = _group_norm_unet()
    latents = torch.randn(1, 4, 8, 8)
    default = probe(unet, latents, timesteps=[100], progress=False)
    zeros = probe(unet, latents, timesteps=[100], encoder_hidden_states=torch.zeros(1, 3, 32), progress=False)
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1"
    np.testing.assert_allclose(default[name]["q"].values, zeros[name]["q"].values, rtol=1e-6, atol=1e-6)
    assert default.attrs["conditioning"] == "zeros"
    with pytest.raises(TypeError, match="needs timesteps"):
        DiffusersUNetAdapter(unet)
    with pytest.raises(ValueError, match="distinct"):
        DiffusersUNetAdapter(unet, timesteps=[5, 5])
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        DiffusersUNetAdapter(unet, timesteps=[1000], scheduler=diffusers.DDPMScheduler())
    with pytest.raises(ValueError, match="4 channels"):
        DiffusersUNetAdapter(unet, timesteps=[1]).sites(torch.zeros(1, 3, 8, 8))

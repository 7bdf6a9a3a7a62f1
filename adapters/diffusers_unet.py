"""Adapter for diffusers Stable Diffusion: ``StableDiffusionPipeline`` and ``UNet2DConditionModel``.

Sites
    Every self-attention ``Attention`` module of the UNet (``is_cross_attention`` false:
    the ``attn1`` of each transformer block, and the group-norm attention of blocks such
    as ``AttnDownBlock2D`` / ``UNetMidBlock2D``; never the cross-attention ``attn2``), in
    forward order (down blocks, mid block, up blocks), named by module path.  Tokens are
    the latent feature map at the block's resolution, row-major: SD 1.x at 512 px has 16
    sites from 64 x 64 down to 8 x 8.  The grid is the latent size halved (rounding up)
    once per downsampler before the block.

Inputs and timesteps
    ``probe(pipe, images, timesteps=[...])`` resizes each image to ``image_size`` (default
    ``unet.config.sample_size * vae_scale_factor``, 512 for SD 1.x), scales it to [-1, 1],
    encodes it with the VAE (the posterior mean, or a sample with ``sample_posterior=True``)
    and scales the latents (``(z - shift_factor) * scaling_factor``).  For every timestep
    it adds noise with the pipeline's scheduler (``scheduler.add_noise``; a scheduler
    without ``alphas_cumprod``, such as Euler, is replaced for this by a
    ``DDPMScheduler`` with the same config) and runs the UNet conditioned on the prompt
    (``""`` by default, encoded once with the pipeline's own ``encode_prompt``).  The
    noise is one Gaussian field drawn from ``seed``, the same for every sample and
    timestep, so a sample's result does not depend on the batch it ran in.
    ``timesteps=(start, stop), n_timesteps=n`` gives ``n`` evenly spaced timesteps.
    ``noise="fresh"`` draws a new noise field for every timestep instead (seeded from
    ``seed`` and the timestep's position).  ``sampling=`` takes a sampling object such as
    :class:`interpret_spectral.spectral.sd_sampling.DiffusionSampling` (anything with
    ``timesteps(limit)`` and ``noise_seed(draw)``): the paper's random timesteps, a fresh
    noise field per draw; the default stays the fixed list with one noise field, which
    makes a store reproducible from its timesteps alone.

    ``probe(unet, latents, timesteps=[...])`` runs a bare ``UNet2DConditionModel`` on
    latent tensors ``(B, C, h, w)``: fed to the UNet as they are at every timestep, or,
    given ``scheduler=``, taken as clean latents and noised like above.  The
    conditioning is ``encoder_hidden_states=`` (``(1 or B, L, cross_attention_dim)``),
    by default zeros ``(B, 1, cross_attention_dim)`` (a null context).  Extra UNet
    arguments (SDXL's ``added_cond_kwargs``) go in ``unet_kwargs=``.

    The store gets the dimension ``timestep``: q, k, v are ``(sample, timestep, head,
    token, channel)``.

Reading
    While a batch runs (:meth:`DiffusersUNetAdapter.forward_context`) each site uses
    the processor diffusers gives it by default, ``AttnProcessor2_0`` (``AttnProcessor``
    when the module has ``scale_qk=False``), wrapped to refuse an ``encoder_hidden_states``
    argument; the model's own processors (LoRA, IP-adapter, custom) are put back on
    every exit path, exceptions included.  Under these processors ``q`` is the output of
    ``attn.norm_q`` when the module has one, else of ``attn.to_q`` (whose input is already
    group-normed when ``attn.group_norm`` is set); ``k`` likewise; ``v`` the output of
    ``attn.to_v``; the scale ``head_dim ** -0.5`` (``attn.scale`` under ``AttnProcessor``);
    the attention output the input of ``attn.to_out[0]``.  ``features`` is the output of
    the site's transformer block (``(B, N, C)``), or of the attention module itself for
    group-norm attention.

The adapter runs several forward passes per batch, so ``backend="nnsight"`` does not
apply; to trace a pipeline with nnsight, use ``PathAdapter`` on an nnsight
``DiffusionModel`` (see ``docs/extending.md``).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from interpret_spectral.adapters._tokens import check_capture, check_token_counts, heads_first
from interpret_spectral.capture.contract import Adapter, AttentionSite, Tap
from interpret_spectral.capture.preprocess import preprocess_images, size_pair
from interpret_spectral.capture.registry import register_adapter

__all__ = ["DiffusersUNetAdapter"]

_STAGES = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def _parse_timesteps(timesteps: Any, n_timesteps: int | None, limit: int | None) -> np.ndarray:
    if timesteps is None:
        raise TypeError(
            "the diffusers adapter needs timesteps: probe(pipe, images, timesteps=[100, 500]) or "
            "timesteps=(start, stop), n_timesteps=n"
        )
    if n_timesteps is not None:
        if isinstance(n_timesteps, bool) or not isinstance(n_timesteps, (int, np.integer)) or n_timesteps < 1:
            raise ValueError(f"n_timesteps must be a positive int, got {n_timesteps!r}")
        if not (isinstance(timesteps, Sequence) and len(timesteps) == 2):
            raise ValueError(f"with n_timesteps, timesteps must be a (start, stop) pair, got {timesteps!r}")
        values = np.rint(np.linspace(float(timesteps[0]), float(timesteps[1]), int(n_timesteps))).astype(np.int64)
    else:
        values = np.atleast_1d(np.asarray(timesteps))
        if values.ndim != 1 or values.size == 0 or values.dtype.kind not in "iu":
            raise ValueError(f"timesteps must be integers (a list, or one int), got {timesteps!r}")
        values = values.astype(np.int64)
    if len(set(values.tolist())) != len(values):
        raise ValueError(f"timesteps must be distinct, got {values.tolist()}")
    if values.min() < 0 or (limit is not None and values.max() >= limit):
        raise ValueError(f"timesteps must lie in [0, {limit}) for this scheduler, got {values.tolist()}")
    return values


class _SelfAttentionProcessor:
    """diffusers' default processor for a self-attention site, refusing encoder hidden states."""

    def __init__(self, inner: Any, path: str) -> None:
        self.inner = inner
        self.path = path

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise RuntimeError(
                f"attention {self.path!r} is self-attention but was called with encoder_hidden_states; "
                "the diffusers adapter cannot record it as self-attention"
            )
        return self.inner(attn, hidden_states, None, attention_mask, temb)


@register_adapter("diffusers")
class DiffusersUNetAdapter(Adapter):
    """Adapter for a Stable Diffusion pipeline or a bare ``UNet2DConditionModel``, over timesteps.

    Parameters
    ----------
    model : diffusers.StableDiffusionPipeline or diffusers.UNet2DConditionModel
        The pipeline (VAE, text encoder, tokenizer, scheduler, UNet) or the UNet alone.
    timesteps : int, sequence of int, or (start, stop) with ``n_timesteps``
        Diffusion timesteps to record, stored along the ``timestep`` dimension.
    n_timesteps : int, optional
        With ``timesteps=(start, stop)``: this many evenly spaced timesteps.
    seed : int
        Seed of the noise (and of the posterior sample).
    prompt : str
        Pipeline only: the conditioning prompt (default: empty).
    encoder_hidden_states : torch.Tensor, optional
        The conditioning ``(1 or B, L, D)``; default: the prompt's embedding (pipeline),
        zeros ``(B, 1, cross_attention_dim)`` (bare UNet).
    scheduler : diffusers scheduler, optional
        Bare UNet only: noise the input latents with it (else they are used as given).
    image_size : int or (int, int), optional
        Pipeline only: size images are resized to.
    sample_posterior : bool
        Pipeline only: encode images to a sample of the VAE posterior instead of its mean.
    unet_kwargs : mapping, optional
        Further keyword arguments of every UNet call.

    Examples
    --------
    >>> from diffusers import UNet2DConditionModel
    >>> unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
    ...     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ...     cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    >>> adapter = DiffusersUNetAdapter(unet, timesteps=[10, 500])
    >>> [(s.name, s.grid) for s in adapter.sites(torch.zeros(1, 4, 8, 8))][:2]
    [('down_blocks.0.attentions.0.transformer_blocks.0.attn1', (8, 8)), ('mid_block.attentions.0.transformer_blocks.0.attn1', (4, 4))]
    >>> adapter.extra_dims(None)["timestep"].tolist()
    [10, 500]
    """

    single_forward = False

    def __init__(
        self,
        model: Any,
        timesteps: int | Sequence[int] | None = None,
        n_timesteps: int | None = None,
        seed: int = 0,
        prompt: str = "",
        encoder_hidden_states: torch.Tensor | None = None,
        scheduler: Any = None,
        image_size: int | Sequence[int] | None = None,
        sample_posterior: bool = False,
        unet_kwargs: Mapping[str, Any] | None = None,
        noise: str = "shared",
        sampling: Any = None,
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        if not self.matches(model):
            raise TypeError(
                "the diffusers adapter needs a StableDiffusionPipeline (or a pipeline with unet, vae and "
                f"scheduler) or a UNet2DConditionModel, got {type(model).__name__}; pick another adapter"
            )
        from diffusers import UNet2DConditionModel

        self.pipeline = None if isinstance(model, UNet2DConditionModel) else model
        self.unet = model if self.pipeline is None else model.unet
        if self.pipeline is not None:
            if getattr(self.pipeline, "text_encoder_2", None) is not None:
                raise TypeError(
                    "SDXL-style pipelines (two text encoders, added conditioning) are not read whole; probe "
                    "pipe.unet with encoder_hidden_states= and unet_kwargs={'added_cond_kwargs': ...}"
                )
            if scheduler is not None:
                raise TypeError("scheduler= is for a bare UNet; a pipeline noises with its own scheduler")
            scheduler = self.pipeline.scheduler
        else:
            if image_size is not None or sample_posterior or prompt:
                raise TypeError("image_size=, sample_posterior= and prompt= need a pipeline; a bare UNet takes latents")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.noise_scheduler = self._noising(scheduler)
        limit = getattr(getattr(self.noise_scheduler, "config", None), "num_train_timesteps", None)
        if noise not in ("shared", "fresh"):
            raise ValueError(f"noise must be 'shared' (one field for every timestep) or 'fresh', got {noise!r}")
        self.sampling = sampling
        if sampling is not None:
            if timesteps is not None or n_timesteps is not None:
                raise TypeError("give timesteps= or sampling=, not both: the sampling draws the timesteps")
            if not (callable(getattr(sampling, "timesteps", None)) and callable(getattr(sampling, "noise_seed", None))):
                raise TypeError("sampling must have timesteps(limit) and noise_seed(draw), e.g. DiffusionSampling()")
            timesteps, noise = [int(t) for t in sampling.timesteps(limit)], "fresh"
        self.noise = noise
        self.timesteps = _parse_timesteps(timesteps, n_timesteps, limit)
        self.seed = int(seed)
        self.prompt = str(prompt)
        self.encoder_hidden_states = encoder_hidden_states
        self.sample_posterior = bool(sample_posterior)
        self.unet_kwargs = dict(unet_kwargs or {})
        self.image_size = None if self.pipeline is None else self._image_size(image_size)
        self._context_cache: torch.Tensor | None = None
        self._attention = self._self_attention_modules()
        if not self._attention:
            raise ValueError(f"{type(self.unet).__name__} has no self-attention module to record")

    # -- identification ---------------------------------------------------------------
    @classmethod
    def matches(cls, model: Any) -> bool:
        """Whether ``model`` is a ``UNet2DConditionModel`` or a pipeline holding one with a VAE.

        Examples
        --------
        >>> DiffusersUNetAdapter.matches(torch.nn.Linear(2, 2))
        False
        """
        if "diffusers" not in sys.modules:
            return False
        from diffusers import DiffusionPipeline, UNet2DConditionModel

        if isinstance(model, UNet2DConditionModel):
            return True
        return (
            isinstance(model, DiffusionPipeline)
            and isinstance(getattr(model, "unet", None), UNet2DConditionModel)
            and getattr(model, "vae", None) is not None
            and getattr(model, "scheduler", None) is not None
        )

    def describe(self) -> dict[str, Any]:
        """Root attributes: model, adapter, timesteps, noise seed, conditioning and scheduler."""
        info: dict[str, Any] = {
            **super().describe(),
            "library": "diffusers",
            "timesteps": [int(t) for t in self.timesteps],
            "noise_seed": self.seed,
            "noise": self.noise,
            "noise_scheduler": type(self.noise_scheduler).__name__ if self.noise_scheduler is not None else "none",
            "conditioning": "encoder_hidden_states" if self.encoder_hidden_states is not None else (
                "prompt" if self.pipeline is not None else "zeros"
            ),
        }
        if self.sampling is not None and callable(getattr(self.sampling, "describe", None)):
            info["sampling"] = {str(k): v for k, v in self.sampling.describe().items()}
        if self.pipeline is not None:
            info.update(prompt=self.prompt, latents="posterior sample" if self.sample_posterior else "posterior mean",
                        image_size=list(self.image_size))
        name = getattr(self.pipeline if self.pipeline is not None else self.unet, "name_or_path", None) or getattr(
            getattr(self.unet, "config", None), "_name_or_path", None
        )
        if name:
            info["model_name"] = str(name)
        return info

    # -- inputs -----------------------------------------------------------------------
    def _noising(self, scheduler: Any) -> Any:
        if scheduler is None or hasattr(scheduler, "alphas_cumprod"):
            return scheduler
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(scheduler.config)

    def _vae_factor(self) -> int:
        return 2 ** (len(self.pipeline.vae.config.block_out_channels) - 1)

    def _image_size(self, image_size: int | Sequence[int] | None) -> tuple[int, int]:
        factor = self._vae_factor()
        if image_size is None:
            latent = size_pair(self.unet.config.sample_size, "the UNet's sample_size")
            pair = (latent[0] * factor, latent[1] * factor)
        else:
            pair = size_pair(image_size, "image_size")
        if pair[0] % factor or pair[1] % factor:
            raise ValueError(f"image_size {pair} must be a multiple of the VAE's downscaling factor {factor}")
        return pair

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """Resize whole images to ``image_size`` and scale them to [-1, 1] ``(B, 3, H, W)`` (pipeline only).

        Examples
        --------
        >>> adapter.preprocess([Image.new("RGB", (600, 400))]).shape  # doctest: +SKIP
        torch.Size([1, 3, 512, 512])
        """
        if self.pipeline is None:
            return super().preprocess(images)
        # (pixels / 255 - 0.5) / 0.5 = pixels / 127.5 - 1
        return preprocess_images(images, self.image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), interpolation="bicubic")

    def model_module(self) -> torch.nn.Module:
        """The UNet: the taps name its modules."""
        return self.unet

    def extra_dims(self, batch: Any) -> dict[str, np.ndarray]:
        """``{"timestep": timesteps}``."""
        return {"timestep": self.timesteps.copy()}

    def _latent_size(self, batch: Any) -> tuple[int, int]:
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4:
            what = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise TypeError(f"the diffusers adapter takes a (B, C, H, W) tensor batch, got {what}")
        if self.pipeline is None:
            channels = self.unet.config.in_channels
            if batch.shape[1] != channels:
                raise ValueError(f"the UNet takes latents with {channels} channels, got {batch.shape[1]}")
            return int(batch.shape[-2]), int(batch.shape[-1])
        factor = self._vae_factor()
        if batch.shape[1] != 3 or batch.shape[-2] % factor or batch.shape[-1] % factor:
            raise ValueError(
                f"the pipeline takes RGB images whose size is a multiple of {factor}, got {tuple(batch.shape)}"
            )
        return int(batch.shape[-2]) // factor, int(batch.shape[-1]) // factor

    def _latents(self, batch: torch.Tensor) -> torch.Tensor:
        unet = self.unet
        if self.pipeline is None:
            return batch.to(unet.device, unet.dtype)
        vae = self.pipeline.vae
        posterior = vae.encode(batch.to(vae.device, vae.dtype)).latent_dist
        latents = posterior.mean
        if self.sample_posterior:
            latents = latents + posterior.std * self._gaussian(latents, self.seed + 1)
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        return (latents * vae.config.scaling_factor).to(unet.device, unet.dtype)

    def _gaussian(self, like: torch.Tensor, seed: int) -> torch.Tensor:
        field = torch.randn(like.shape[1:], generator=torch.Generator("cpu").manual_seed(seed))
        return field.to(like.device, like.dtype).expand_as(like)

    def _context(self, batch_size: int) -> torch.Tensor:
        unet = self.unet
        if self.encoder_hidden_states is not None:
            context = torch.as_tensor(self.encoder_hidden_states)
        elif self.pipeline is not None:
            if self._context_cache is None:
                self._context_cache = self.pipeline.encode_prompt(self.prompt, unet.device, 1, False)[0]
            context = self._context_cache
        else:
            width = unet.config.cross_attention_dim
            if not isinstance(width, (int, np.integer)):
                raise ValueError(
                    f"the UNet's cross_attention_dim is {width!r}; pass encoder_hidden_states= to the adapter"
                )
            context = torch.zeros(1, 1, int(width))
        if context.ndim != 3 or context.shape[0] not in (1, batch_size):
            raise ValueError(f"encoder_hidden_states must be (1 or {batch_size}, L, D), got {tuple(context.shape)}")
        return context.to(unet.device, unet.dtype).expand(batch_size, -1, -1)

    def run(self, batch: Any) -> None:
        """Encode (pipeline), then noise and run the UNet once per timestep."""
        self._latent_size(batch)
        with torch.no_grad():
            latents = self._latents(batch)
            noise = self._gaussian(latents, self.seed) if self.noise_scheduler is not None else None
            context = self._context(len(latents))
            for draw, timestep in enumerate(self.timesteps):
                steps = torch.full((len(latents),), int(timestep), dtype=torch.long, device=latents.device)
                if noise is not None and self.noise == "fresh":
                    noise = self._gaussian(latents, self._fresh_seed(draw))
                sample = latents if noise is None else self.noise_scheduler.add_noise(latents, noise, steps)
                self.unet(sample, steps, encoder_hidden_states=context, **self.unet_kwargs)

    def _fresh_seed(self, draw: int) -> int:
        if self.sampling is not None:
            return int(self.sampling.noise_seed(draw))
        return int(np.random.SeedSequence([self.seed, int(draw)]).generate_state(1)[0])

    @contextlib.contextmanager
    def forward_context(self, batch: Any) -> Iterator[None]:
        """Give every site diffusers' default processor; the model's own processors come back on exit."""
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        originals: dict[str, Any] = {}
        try:
            for path, attn in self._attention.items():
                originals[path] = attn.processor
                inner = AttnProcessor2_0() if attn.scale_qk else AttnProcessor()
                attn.set_processor(_SelfAttentionProcessor(inner, path))
            yield
        finally:
            for path, processor in originals.items():
                self._attention[path].set_processor(processor)

    # -- sites and reading ------------------------------------------------------------
    def _self_attention_modules(self) -> dict[str, Any]:
        from diffusers.models.attention_processor import Attention

        found = []
        for position, (path, module) in enumerate(self.unet.named_modules()):
            if isinstance(module, Attention) and not module.is_cross_attention:
                parts = path.split(".")
                if parts[0] not in _STAGES:
                    raise ValueError(f"self-attention {path!r} is outside the UNet's down, mid and up blocks")
                index = int(parts[1]) if parts[0] != "mid_block" else 0
                found.append(((_STAGES[parts[0]], index, position), path, module))
        return {path: module for _, path, module in sorted(found, key=lambda item: item[0])}

    def _levels(self, latent: tuple[int, int]) -> dict[tuple[int, int], tuple[int, int]]:
        """Grid of every (stage, block index): the latent halved, rounding up, per downsampler."""
        sizes = [latent]
        grids: dict[tuple[int, int], tuple[int, int]] = {}
        for index, block in enumerate(self.unet.down_blocks):
            grids[(0, index)] = sizes[-1]
            if getattr(block, "downsamplers", None) is not None:
                sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
        level = len(sizes) - 1
        grids[(1, 0)] = sizes[level]
        for index, block in enumerate(self.unet.up_blocks):
            grids[(2, index)] = sizes[level]
            if getattr(block, "upsamplers", None) is not None:
                level -= 1
        return grids

    def sites(self, batch: Any) -> list[AttentionSite]:
        """The self-attention sites in forward order, with the latent grid of each block."""
        grids = self._levels(self._latent_size(batch))
        sites = []
        for order, (path, attn) in enumerate(self._attention.items()):
            parts = path.split(".")
            grid = grids[(_STAGES[parts[0]], int(parts[1]) if parts[0] != "mid_block" else 0)]
            heads = int(attn.heads)
            head_dim = int(attn.to_q.out_features) // heads
            scale = float(attn.scale) if not attn.scale_qk else (int(attn.to_k.out_features) // heads) ** -0.5
            sites.append(
                AttentionSite(path, path, order, heads, head_dim, scale, grid, ("patch",) * (grid[0] * grid[1]))
            )
        return sites

    def _qk_tap(self, site: AttentionSite, part: str) -> Tap:
        attn = self._attention[site.module]
        norm = getattr(attn, f"norm_{part}", None)
        if attn.scale_qk and norm is not None:  # AttnProcessor2_0 applies norm_q / norm_k
            return Tap(f"{site.module}.norm_{part}")
        return Tap(f"{site.module}.to_{part}")

    def _features_tap(self, site: AttentionSite) -> Tap:
        parent, _, leaf = site.module.rpartition(".")
        if leaf == "attn1" and parent:
            return Tap(parent)
        return Tap(site.module)

    def taps(self, site: AttentionSite, capture: Sequence[str]) -> list[Tap]:
        """``to_q``/``to_k`` (or ``norm_q``/``norm_k``), ``to_v`` outputs, and the block output for features."""
        check_capture(capture, self.name)
        if site.module not in self._attention:
            raise KeyError(f"site {site.name!r} is not a self-attention module of this UNet")
        taps = []
        for part in ("q", "k"):
            if part in capture:
                taps.append(self._qk_tap(site, part))
        if "v" in capture:
            taps.append(Tap(f"{site.module}.to_v"))
        if "features" in capture:
            taps.append(self._features_tap(site))
        return taps

    def assemble(
        self, site: AttentionSite, tapped: Mapping[str, list[torch.Tensor]], capture: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Stack the per-timestep values: q, k, v ``(B, T, H, N, D)``, features ``(B, T, N, C)``."""
        sources = {part: self._qk_tap(site, part) for part in ("q", "k")}
        sources["v"] = Tap(f"{site.module}.to_v")
        sources["features"] = self._features_tap(site)
        out: dict[str, torch.Tensor] = {}
        for name in capture:
            values = tapped.get(sources[name].key, [])
            if len(values) != len(self.timesteps):
                raise RuntimeError(
                    f"module {sources[name].module!r} ran {len(values)} times for {len(self.timesteps)} timesteps; "
                    "the diffusers adapter expects each self-attention module to run once per UNet call"
                )
            if name == "features":
                steps = [v.flatten(2).transpose(1, 2) if v.ndim == 4 else v for v in values]
            else:
                steps = [heads_first(v, site.num_heads, f"{name} of {site.name!r}") for v in values]
            out[name] = torch.stack(steps, dim=1)
        check_token_counts(site, out)
        return out

    def output_tap(self, site: AttentionSite) -> Tap:
        """The input of ``attn.to_out[0]`` ``(B, N, H*D)``, once per timestep."""
        return Tap(f"{site.module}.to_out.0", "input")

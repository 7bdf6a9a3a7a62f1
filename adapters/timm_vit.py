"""Adapter for timm Vision Transformers (``timm.models.vision_transformer.VisionTransformer``).

Covers every timm ``VisionTransformer`` (and subclass) whose blocks use
``timm.layers.Attention``: DINO, DINOv2 (``vit_*_dinov2``, with or without register
tokens), MAE, CLIP image towers, DeiT (``VisionTransformerDistilled`` with its
distillation token), SigLIP (``vit_*_siglip_*``: no class token, an attention-pool head
``attn_pool`` whose cross-attention from one learned latent is not a token graph and is
not recorded), and so on.  EVA / EVA-02 (``timm.models.eva.Eva``, rotary embeddings) have
their own adapter, ``timm-eva`` (:mod:`interpret_spectral.adapters.timm_eva`).

What is read, per block ``blocks.<i>`` (timm 1.0.x ``Attention.forward``)::

    qkv = self.qkv(x) -> reshape (B, N, 3, H, D) -> q, k, v   # tap: qkv output  -> v
    q, k = self.q_norm(q), self.k_norm(k)                    # taps: q_norm / k_norm outputs -> q, k
    x = scaled_dot_product_attention(q, k, v)                # fused SDPA: no weights to hook
    x = self.norm(x.transpose(1, 2).reshape(B, N, H*D))      # tap: norm input -> attention output
    x = self.proj(x * gate)

``q_norm`` and ``k_norm`` are called on every forward (``nn.Identity`` when the model
has no q/k norm), so ``q`` and ``k`` are what the softmax saw.  The attention output
(:meth:`TimmViTAdapter.output_tap`) is the input of ``attn.norm`` (the scale norm,
``nn.Identity`` in most models), which equals the input of ``attn.proj`` unless the
model has a scale norm or an output gate; it is the raw ``softmax(q k^T s) v`` in
every case.  ``features`` is the output of the block (``blocks.<i>``), ``(B, N, C)``.

Input sizes other than the one the model was built for (e.g. 448 px on a 224 px
model) work: a model created with ``dynamic_img_size=True`` interpolates its
position embedding by itself; for any other model, :meth:`TimmViTAdapter.run`
switches timm's dynamic-size mode on for the duration of the forward pass and
restores the model's state afterwards, on every exit path (weights are never
changed); running at another size than the model's own is said with a warning.  With
``backend="nnsight"`` the forward pass is run by nnsight, outside the adapter, so a
different input size there needs a model created with ``dynamic_img_size=True``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Literal

import torch

from interpret_spectral.adapters._tokens import CAPTURABLE, check_capture, check_token_counts, single_value
from interpret_spectral.capture.contract import Adapter, AttentionSite, Tap
from interpret_spectral.capture.preprocess import (
    check_patch_multiple, image_batch_size, preprocess_images, resolve_image_size, warn_size_differs,
)
from interpret_spectral.capture.registry import register_adapter

__all__ = ["TimmViTAdapter"]


@register_adapter("timm-vit")
class TimmViTAdapter(Adapter):
    """Adapter for timm ``VisionTransformer`` models with ``timm.layers.Attention`` blocks.

    Parameters
    ----------
    model : timm.models.vision_transformer.VisionTransformer
        The model, in eval mode (dropout in train mode changes the attention output).
    image_size : int or (int, int), optional
        Size :meth:`preprocess` resizes images to; default: the size the model was
        built for (``model.patch_embed.img_size``).  Must be a multiple of the patch size.
        With ``resize="short_side"``, one int: the length of the short side.
    resize : {"square", "short_side"}
        ``"square"``: every image to ``image_size`` (stretched if not square);
        ``"short_side"``: the short side to ``image_size``, the aspect ratio kept, the
        long side rounded to a multiple of the patch size (the paper's preprocessing;
        see :mod:`interpret_spectral.capture.preprocess`).
    mean, std : sequence of 3 floats, optional
        Normalisation of :meth:`preprocess`; default the model's ``pretrained_cfg``
        (0.5/0.5 for a SigLIP made by ``timm.create_model``).  A model built from its class
        has no ``pretrained_cfg`` and gets timm's ImageNet default: give the values its
        weights were trained with.

    Notes
    -----
    Site names are the module paths of the attention modules (``"blocks.3.attn"``).
    Tokens are labelled in sequence order: ``"cls"`` (``model.cls_token``),
    ``"distillation"`` (``model.dist_token``, DeiT), ``"register"``
    (``model.num_reg_tokens``), then the patch grid in row-major order.

    Examples
    --------
    >>> from timm.models.vision_transformer import VisionTransformer
    >>> model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3).eval()
    >>> adapter = TimmViTAdapter(model)
    >>> site = adapter.sites(torch.zeros(1, 3, 32, 32))[0]
    >>> site.name, site.grid, site.token_kinds[:2]
    ('blocks.0.attn', (4, 4), ('cls', 'patch'))
    """

    #: Tried before generic adapters by ``adapter="auto"``.
    priority: ClassVar[int] = 10
    #: What :meth:`matches` accepts, for the message when it does not hold.
    _accepts: ClassVar[str] = "a timm VisionTransformer whose blocks use timm.layers.Attention"

    def __init__(
        self,
        model: Any,
        image_size: int | Sequence[int] | None = None,
        resize: Literal["square", "short_side"] = "square",
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        if not self.matches(model):
            raise TypeError(
                f"the {self.name} adapter needs {self._accepts}, "
                f"got {type(model).__name__}; pick another adapter (adapter='auto' lists them)"
            )
        self.resize = resize
        self._warned: set[tuple[int, int]] = set()
        default = self._native_size() if image_size is None else image_size
        self.image_size: int | tuple[int, int] = resolve_image_size(image_size, resize, default, self._size_multiple())

    # -- identification ---------------------------------------------------------------
    @classmethod
    def matches(cls, model: Any) -> bool:
        """Whether ``model`` is a timm ``VisionTransformer`` with ``timm.layers.Attention`` blocks.

        (For a subclass adapter: a model of its :meth:`_timm_classes`.)

        Examples
        --------
        >>> TimmViTAdapter.matches(torch.nn.Linear(2, 2))
        False
        """
        if "timm" not in sys.modules or not isinstance(model, torch.nn.Module):
            return False
        model_class, attention_classes = cls._timm_classes()
        blocks = getattr(model, "blocks", None)
        return (
            isinstance(model, model_class)
            and isinstance(blocks, torch.nn.ModuleList | torch.nn.Sequential)
            and len(blocks) > 0
            and all(isinstance(getattr(block, "attn", None), attention_classes) for block in blocks)
        )

    @classmethod
    def _timm_classes(cls) -> tuple[type, tuple[type, ...]]:
        """The model class and the attention classes of its blocks that this adapter reads."""
        from timm.layers import Attention
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer, (Attention,)

    def describe(self) -> dict[str, Any]:
        """Root attributes: model class, adapter, timm architecture and pretrained tag when known.

        Examples
        --------
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3)
        >>> TimmViTAdapter(model).describe()["model"]
        'VisionTransformer'
        """
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        architecture = cfg.get("architecture")
        tag = cfg.get("tag")
        info: dict[str, Any] = {**super().describe(), "library": "timm"}
        if architecture:
            info["model_name"] = f"{architecture}.{tag}" if tag else architecture
        if cfg.get("hf_hub_id"):
            info["hf_hub_id"] = cfg["hf_hub_id"]
        info["native_image_size"] = list(self._native_size())
        return info

    # -- inputs -----------------------------------------------------------------------
    def _native_size(self) -> tuple[int, int]:
        img_size = getattr(self.model.patch_embed, "img_size", None)
        if img_size is None:
            raise ValueError("this timm model has no fixed image size; pass image_size= to the adapter")
        return int(img_size[0]), int(img_size[1])

    def _patch_size(self) -> tuple[int, int]:
        patch = self.model.patch_embed.patch_size
        return int(patch[0]), int(patch[1])

    def _size_multiple(self) -> tuple[int, int]:
        """What input sizes must be a multiple of: the patch size, unless the model pads its inputs."""
        return (1, 1) if getattr(self.model.patch_embed, "dynamic_img_pad", False) else self._patch_size()

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """``(B, 3, H, W)`` float32 batch of whole PIL images, resized (``image_size``, ``resize``) and normalised.

        :func:`~interpret_spectral.capture.preprocess.preprocess_images` with the
        interpolation, mean and std of the model's ``pretrained_cfg``
        (``timm.data.resolve_model_data_config``), unless ``mean``/``std`` were given.

        Examples
        --------
        >>> from PIL import Image
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3)
        >>> TimmViTAdapter(model).preprocess([Image.new("RGB", (50, 40))]).shape
        torch.Size([1, 3, 32, 32])
        >>> TimmViTAdapter(model, image_size=32, resize="short_side").preprocess([Image.new("RGB", (80, 40))]).shape
        torch.Size([1, 3, 32, 64])
        """
        from timm.data import resolve_model_data_config

        config = resolve_model_data_config(self.model)
        interpolation = str(config.get("interpolation", "bicubic"))
        return preprocess_images(
            images, self.image_size,
            config["mean"] if self.mean is None else self.mean, config["std"] if self.std is None else self.std,
            interpolation=interpolation if interpolation in ("bicubic", "bilinear", "nearest", "lanczos") else "bicubic",
            resize=self.resize, multiple=self._patch_size(),
        )

    def call_args(self, batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(batch,)``, after checking that the batch is an image tensor the patch size divides."""
        self._batch_size(batch)
        return (batch,), {}

    def forward_context(self, batch: Any) -> contextlib.AbstractContextManager[None]:
        """Interpolate position embeddings while a batch of a new size runs (restored on every exit)."""
        size = self._batch_size(batch)
        native = self._native_size()
        warn_size_differs(f"timm {type(self.model).__name__}", native, size, self._warned)
        if size == native or self._dynamic_now():
            return contextlib.nullcontext()
        if not hasattr(self.model, "dynamic_img_size"):
            raise ValueError(
                f"{type(self.model).__name__} has no dynamic image size mode; feed {native[0]}x{native[1]} inputs"
            )
        return _DynamicSize(self.model)

    def _batch_size(self, batch: Any) -> tuple[int, int]:
        channels = getattr(getattr(self.model.patch_embed, "proj", None), "in_channels", None)
        size = image_batch_size(batch, type(self.model).__name__, channels)
        check_patch_multiple(size, self._size_multiple())
        return size

    def _dynamic_now(self) -> bool:
        return bool(getattr(self.model, "dynamic_img_size", False))

    # -- sites and reading ------------------------------------------------------------
    def _token_kinds_prefix(self) -> list[str]:
        model = self.model
        kinds: list[str] = []
        if getattr(model, "cls_token", None) is not None:
            kinds.append("cls")
        if getattr(model, "dist_token", None) is not None:
            kinds.append("distillation")
        if getattr(model, "reg_token", None) is not None:
            kinds.extend(["register"] * int(model.reg_token.shape[1]))
        expected = int(getattr(model, "num_prefix_tokens", len(kinds)))
        if len(kinds) != expected:
            raise ValueError(
                f"{type(model).__name__} declares {expected} prefix tokens but the adapter found {kinds}; "
                "its token layout is unknown to the timm-vit adapter"
            )
        return kinds

    def sites(self, batch: Any) -> list[AttentionSite]:
        """One site per block (``blocks.<i>.attn``), in forward order, for inputs shaped like ``batch``.

        Examples
        --------
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, reg_tokens=2)
        >>> TimmViTAdapter(model).sites(torch.zeros(1, 3, 64, 64))[1].token_kinds[:4]
        ('cls', 'register', 'register', 'patch')
        """
        height, width = self._batch_size(batch)
        embed = self.model.patch_embed
        if not hasattr(embed, "dynamic_feat_size"):
            raise ValueError(
                f"{type(embed).__name__} does not say its grid size; the timm-vit adapter cannot place tokens"
            )
        grid = tuple(int(g) for g in embed.dynamic_feat_size((height, width)))
        kinds = tuple(self._token_kinds_prefix() + ["patch"] * (grid[0] * grid[1]))
        sites = []
        for order, block in enumerate(self.model.blocks):
            attn = block.attn
            # Fused SDPA uses its default scale head_dim**-0.5; the manual path uses attn.scale.
            scale = attn.head_dim ** -0.5 if getattr(attn, "fused_attn", False) else float(attn.scale)
            sites.append(
                AttentionSite(
                    name=f"blocks.{order}.attn",
                    module=f"blocks.{order}.attn",
                    order=order,
                    num_heads=int(attn.num_heads),
                    head_dim=int(attn.head_dim),
                    scale=float(scale),
                    grid=(grid[0], grid[1]),
                    token_kinds=kinds,
                )
            )
        return sites

    def _block(self, site: AttentionSite) -> str:
        return site.module.rsplit(".", 1)[0]

    def taps(self, site: AttentionSite, capture: Sequence[str]) -> list[Tap]:
        """Taps in execution order: ``qkv``, ``q_norm``, ``k_norm`` outputs, then the block output.

        Examples
        --------
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3)
        >>> adapter = TimmViTAdapter(model)
        >>> [t.key for t in adapter.taps(adapter.sites(torch.zeros(1, 3, 32, 32))[0], ["q", "v"])]
        ['blocks.0.attn.qkv:output', 'blocks.0.attn.q_norm:output']
        """
        check_capture(capture, self.name)
        sources = self._sources(site)
        return [sources[name] for name in ("v", "q", "k", "features") if name in capture]

    def _sources(self, site: AttentionSite) -> dict[str, Tap]:
        """The tap each part is read from, before :meth:`_finish`."""
        return {
            "v": Tap(f"{site.module}.qkv"),
            "q": Tap(f"{site.module}.q_norm"),
            "k": Tap(f"{site.module}.k_norm"),
            "features": Tap(self._block(site)),
        }

    def assemble(
        self, site: AttentionSite, tapped: Mapping[str, list[torch.Tensor]], capture: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """``q``/``k`` from the q/k norms, ``v`` from the fused ``qkv`` projection, ``features`` from the block."""
        sources = self._sources(site)
        read = {name: single_value(tapped, sources[name], self.name) for name in CAPTURABLE if name in capture}
        out = self._finish(site, read)
        check_token_counts(
            site, out, "was the model run on inputs of another size, or with patch dropout in train mode?"
        )
        return out

    def _finish(self, site: AttentionSite, read: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tapped values as the softmax saw them: ``v`` ``(B, H, N, D)`` out of the fused ``qkv`` output."""
        if "v" in read:
            batch, tokens, _ = read["v"].shape
            read["v"] = read["v"].reshape(batch, tokens, 3, site.num_heads, site.head_dim)[:, :, 2].transpose(1, 2)
        return read

    def output_tap(self, site: AttentionSite) -> Tap:
        """The attention output ``(B, N, H*D)``: the input of ``attn.norm`` (else ``attn.proj``)."""
        attn = self.model.get_submodule(site.module)
        if isinstance(getattr(attn, "norm", None), torch.nn.Module):
            return Tap(f"{site.module}.norm", "input")
        return Tap(f"{site.module}.proj", "input")


class _DynamicSize:
    """timm's dynamic image size mode switched on for one batch; the model's state comes back on every exit.

    The state is saved before anything changes, every change happens inside ``try`` and
    :meth:`__exit__` restores all of it unconditionally, so an exception or a
    ``KeyboardInterrupt`` anywhere (even while switching) leaves the model as it was.
    """

    _FIELDS = (("model", "dynamic_img_size"), ("embed", "strict_img_size"), ("embed", "flatten"), ("embed", "output_fmt"))

    def __init__(self, model: torch.nn.Module) -> None:
        self.objects = {"model": model, "embed": model.patch_embed}
        self.saved = [(self.objects[owner], field, getattr(self.objects[owner], field)) for owner, field in self._FIELDS]

    def __enter__(self) -> None:
        from timm.layers import Format

        try:
            # What VisionTransformer(dynamic_img_size=True) sets up: NHWC patches, the
            # position embedding resampled to the grid in _pos_embed.
            model, embed = self.objects["model"], self.objects["embed"]
            model.dynamic_img_size = True
            embed.strict_img_size = False
            embed.flatten = False
            embed.output_fmt = Format.NHWC
        except BaseException:
            self.restore()
            raise

    def restore(self) -> None:
        """Put back every saved attribute."""
        for owner, field, value in self.saved:
            setattr(owner, field, value)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.restore()

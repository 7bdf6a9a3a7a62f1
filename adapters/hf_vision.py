"""Adapter for Hugging Face transformers vision encoders (transformers 5.x).

Models: ``Dinov2Model``, ``Dinov2WithRegistersModel``, ``ViTModel``, ``CLIPVisionModel``,
``ViTMAEModel``, ``SiglipVisionModel``, and ``CLIPModel`` / ``SiglipModel`` (their vision
tower ``model.vision_model`` is run and read; the text tower is not used).

transformers 5.x attention modules hold four linear layers: ``q_proj``, ``k_proj``,
``v_proj`` and ``o_proj`` (``out_proj`` for CLIP).  Their sites are::

    Dinov2Model, Dinov2WithRegistersModel   encoder.layer.<i>.attention
    ViTModel, ViTMAEModel                   layers.<i>.attention
    CLIPVisionModel, CLIPModel              encoder.layers.<i>.self_attn   (inside vision_model for CLIPModel)
    SiglipVisionModel, SiglipModel          encoder.layers.<i>.self_attn   (inside vision_model for SiglipModel)

``q``/``k``/``v`` are the outputs of ``q_proj``/``k_proj``/``v_proj`` split into heads
(these models have no q/k norm), the scale is the module's ``scaling`` (``scale`` for
CLIP), which it hands to the attention function, the attention output
(:meth:`HFVisionAdapter.output_tap`) is the input of ``o_proj``/``out_proj`` and
``features`` the output of the layer holding the attention module.

Tokens: a class token first (``"cls"``), then ``config.num_register_tokens`` register
tokens (Dinov2 with registers), then the patch grid in row-major order.  SigLIP has no
class token (its image embedding is an attention-pooling head, ``head.attention``, an
``nn.MultiheadAttention`` from one learned probe to the patches, which is cross-attention
and not recorded): its tokens are the patches alone.  SigLIP images are normalised with
0.5/0.5 and resized bicubic, as ``SiglipImageProcessor`` does.

Position embeddings: Dinov2 models always interpolate them to the input grid; ViT,
CLIP and ViT-MAE get ``interpolate_pos_encoding=True`` when the input size differs
from ``config.image_size``.  Either way, running at another size than
``config.image_size`` (e.g. a Dinov2 configured for 224 px at the paper's 448 px) is
said with a ``UserWarning`` naming both sizes, once per size.  Grids need not be
square: ``resize="short_side"`` keeps the aspect ratio of the images.

ViT-MAE: the model shuffles its patch tokens (random masking) on every forward pass.
The adapter passes ordered ``noise`` (``arange(num_patches)`` per sample) so that the
tokens stay in grid order, and refuses a model whose ``config.mask_ratio`` is not 0
(set ``model.config.mask_ratio = 0.0`` first: pretrained MAE configs say 0.75, which
would drop three quarters of the patches).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from interpret_spectral.adapters._tokens import check_capture, check_token_counts, single_value
from interpret_spectral.capture.contract import Adapter, AttentionSite, Tap, split_heads
from interpret_spectral.capture.preprocess import (
    check_patch_multiple, image_batch_size, preprocess_images, resolve_image_size, warn_size_differs,
)
from interpret_spectral.capture.registry import register_adapter

__all__ = ["HFVisionAdapter"]

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))

# Family -> (mean/std, PIL resample name, default image size or None for config.image_size),
# after the defaults of each family's image processor in transformers.
_FAMILIES: dict[str, tuple[tuple[tuple[float, ...], tuple[float, ...]], str, int | None]] = {
    "Dinov2Model": (_IMAGENET, "bicubic", 448),
    "Dinov2WithRegistersModel": (_IMAGENET, "bicubic", 448),
    "ViTModel": (_HALF, "bilinear", None),
    "ViTMAEModel": (_IMAGENET, "bilinear", None),
    "CLIPVisionModel": (_CLIP, "bicubic", None),
    "SiglipVisionModel": (_HALF, "bicubic", None),
}
#: Families whose sequence has no class token (the patches come first).
_NO_CLASS_TOKEN = frozenset({"SiglipVisionModel"})
_OUTPUT_PROJECTIONS = ("o_proj", "out_proj")


def _family_classes() -> dict[str, type]:
    import transformers

    return {name: getattr(transformers, name) for name in _FAMILIES}


def _vision_encoder(model: Any) -> tuple[torch.nn.Module, str] | None:
    """The supported encoder inside ``model`` and its family name, or None."""
    if "transformers" not in sys.modules or not isinstance(model, torch.nn.Module):
        return None
    if not any(cls.__module__.startswith("transformers.") for cls in type(model).__mro__):
        return None  # not a transformers model: skip importing the modeling modules below
    import transformers

    if isinstance(model, (transformers.CLIPModel, transformers.SiglipModel)):
        model = model.vision_model
    for name, cls in _family_classes().items():
        if isinstance(model, cls):
            return model, name
    return None


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    return int(value[0]), int(value[1])


@register_adapter("hf-vision")
class HFVisionAdapter(Adapter):
    """Adapter for Hugging Face ``Dinov2Model``, ``Dinov2WithRegistersModel``, ``ViTModel``,
    ``CLIPVisionModel``, ``ViTMAEModel``, ``SiglipVisionModel`` and the vision tower of
    ``CLIPModel`` and ``SiglipModel``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        One of the models above, in eval mode.
    image_size : int or (int, int), optional
        Size :meth:`preprocess` resizes images to.  Default: 448 for Dinov2 models
        (32 x 32 patches of 14 px), ``config.image_size`` otherwise.  Must be a
        multiple of the patch size.  With ``resize="short_side"``, one int: the short side.
    resize : {"square", "short_side"}
        ``"square"``: every image to ``image_size``; ``"short_side"``: the short side to
        ``image_size`` with the aspect ratio kept (the paper's preprocessing; see
        :mod:`interpret_spectral.capture.preprocess`).
    mean, std : sequence of 3 floats, optional
        Normalisation of :meth:`preprocess`.  Default: the family's image-processor
        default (ImageNet for Dinov2 and ViT-MAE, 0.5/0.5 for ViT and SigLIP, OpenAI CLIP for CLIP).

    Examples
    --------
    >>> from transformers import Dinov2Config, Dinov2Model
    >>> config = Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
    ...                       intermediate_size=96, image_size=56, patch_size=14)
    >>> adapter = HFVisionAdapter(Dinov2Model(config).eval(), image_size=56)
    >>> site = adapter.sites(torch.zeros(1, 3, 56, 56))[0]
    >>> site.name, site.grid, site.token_kinds[:2]
    ('encoder.layer.0.attention', (4, 4), ('cls', 'patch'))
    """

    #: Tried before generic adapters by ``adapter="auto"``.
    priority: ClassVar[int] = 10

    def __init__(
        self,
        model: Any,
        image_size: int | Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        resize: Literal["square", "short_side"] = "square",
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        found = _vision_encoder(model)
        if found is None:
            raise TypeError(
                f"the hf-vision adapter knows {', '.join(_FAMILIES)}, CLIPModel and SiglipModel, got {type(model).__name__}; "
                "pick another adapter (adapter='auto' lists them)"
            )
        self.encoder, self.family = found
        self.config = self.encoder.config
        self.patch_size = _pair(self.config.patch_size)
        (default_mean, default_std), self.resample, default_size = _FAMILIES[self.family]
        self.resize = resize
        self._warned: set[tuple[int, int]] = set()
        self.image_size: int | tuple[int, int] = resolve_image_size(
            image_size, resize, _pair(default_size or self.config.image_size), self.patch_size
        )
        self.mean = self._channels(default_mean if mean is None else mean, "mean")
        self.std = self._channels(default_std if std is None else std, "std")
        if np.any(self.std <= 0):
            raise ValueError(f"std must be positive, got {self.std.tolist()}")
        self._attention_paths = self._find_attention()
        self._check_mask_ratio()

    @staticmethod
    def _channels(values: Sequence[float], what: str) -> np.ndarray:
        array = np.asarray(values, dtype=np.float32).reshape(-1)
        if array.shape != (3,):
            raise ValueError(f"{what} must hold 3 values (R, G, B), got {list(values)}")
        return array

    # -- identification ---------------------------------------------------------------
    @classmethod
    def matches(cls, model: Any) -> bool:
        """Whether ``model`` is one of the supported transformers vision encoders.

        Examples
        --------
        >>> HFVisionAdapter.matches(torch.nn.Linear(2, 2))
        False
        """
        return _vision_encoder(model) is not None

    def describe(self) -> dict[str, Any]:
        """Root attributes: model class, adapter, checkpoint name and the encoder family.

        Examples
        --------
        >>> from transformers import ViTConfig, ViTModel
        >>> config = ViTConfig(hidden_size=48, num_hidden_layers=1, num_attention_heads=3,
        ...                    intermediate_size=96, image_size=32, patch_size=8)
        >>> HFVisionAdapter(ViTModel(config)).describe()["encoder"]
        'ViTModel'
        """
        info: dict[str, Any] = {**super().describe(), "library": "transformers", "encoder": self.family}
        name = getattr(self.model.config, "_name_or_path", "") or getattr(self.config, "_name_or_path", "")
        if name:
            info["model_name"] = name
        info["native_image_size"] = list(_pair(self.config.image_size))
        info["attn_implementation"] = str(getattr(self.config, "_attn_implementation", ""))
        return info

    # -- inputs -----------------------------------------------------------------------
    def _batch_size(self, batch: Any) -> tuple[int, int]:
        size = image_batch_size(batch, self.family, getattr(self.config, "num_channels", None))
        check_patch_multiple(size, self.patch_size)
        return size

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """``(B, 3, H, W)`` float32 batch of whole PIL images, resized (``image_size``, ``resize``) and normalised.

        :func:`~interpret_spectral.capture.preprocess.preprocess_images` with the family's
        interpolation and the adapter's ``mean`` and ``std``.

        Examples
        --------
        >>> from PIL import Image
        >>> from transformers import ViTConfig, ViTModel
        >>> config = ViTConfig(hidden_size=48, num_hidden_layers=1, num_attention_heads=3,
        ...                    intermediate_size=96, image_size=32, patch_size=8)
        >>> HFVisionAdapter(ViTModel(config)).preprocess([Image.new("RGB", (50, 40))]).shape
        torch.Size([1, 3, 32, 32])
        """
        return preprocess_images(
            images, self.image_size, self.mean, self.std,
            interpolation=self.resample, resize=self.resize, multiple=self.patch_size,
        )

    def model_module(self) -> torch.nn.Module:
        """The vision encoder (``model.vision_model`` for a ``CLIPModel`` or ``SiglipModel``, else the model)."""
        return self.encoder

    def _check_mask_ratio(self) -> None:
        if self.family == "ViTMAEModel" and float(self.config.mask_ratio) != 0.0:
            raise ValueError(
                f"this ViTMAEModel drops config.mask_ratio = {self.config.mask_ratio} of its patch tokens at random; "
                "set model.config.mask_ratio = 0.0 before probing so that every patch is kept"
            )

    def call_args(self, batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Pixels, plus ``interpolate_pos_encoding`` for a new size and ordered ``noise`` for ViT-MAE.

        Examples
        --------
        >>> from transformers import ViTMAEConfig, ViTMAEModel
        >>> config = ViTMAEConfig(hidden_size=48, num_hidden_layers=1, num_attention_heads=3,
        ...                       intermediate_size=96, image_size=32, patch_size=8, mask_ratio=0.0)
        >>> args, kwargs = HFVisionAdapter(ViTMAEModel(config)).call_args(torch.zeros(2, 3, 32, 32))
        >>> kwargs["noise"].shape
        torch.Size([2, 16])
        """
        height, width = self._batch_size(batch)
        kwargs: dict[str, Any] = {}
        configured = _pair(self.config.image_size)
        warn_size_differs(self.family, configured, (height, width), self._warned)
        if (height, width) != configured and "interpolate_pos_encoding" in inspect.signature(
            self.encoder.forward
        ).parameters:
            kwargs["interpolate_pos_encoding"] = True
        if self.family == "ViTMAEModel":
            self._check_mask_ratio()
            num_patches = (height // self.patch_size[0]) * (width // self.patch_size[1])
            order = torch.arange(num_patches, dtype=torch.float32, device=batch.device)
            kwargs["noise"] = order.expand(batch.shape[0], num_patches)
        return (batch,), kwargs

    # -- sites and reading ------------------------------------------------------------
    def _find_attention(self) -> list[str]:
        paths = []
        for path, module in self.encoder.named_modules():
            children = dict(module.named_children())
            projections = [children.get(name) for name in ("q_proj", "k_proj", "v_proj")]
            if all(isinstance(p, torch.nn.Linear) for p in projections) and any(
                isinstance(children.get(name), torch.nn.Linear) for name in _OUTPUT_PROJECTIONS
            ):
                paths.append(path)
        if not paths:
            raise ValueError(
                f"found no attention modules with q_proj/k_proj/v_proj/o_proj in {type(self.encoder).__name__}; "
                "the hf-vision adapter reads the transformers 5.x module layout (pip install 'transformers>=5')"
            )
        return paths

    def _output_projection(self, site: AttentionSite) -> str:
        attn = self.encoder.get_submodule(site.module)
        for name in _OUTPUT_PROJECTIONS:
            if isinstance(getattr(attn, name, None), torch.nn.Linear):
                return f"{site.module}.{name}"
        raise ValueError(f"site {site.name!r} has no output projection ({' or '.join(_OUTPUT_PROJECTIONS)})")

    def sites(self, batch: Any) -> list[AttentionSite]:
        """One site per encoder layer, in forward order, for inputs shaped like ``batch``.

        Examples
        --------
        >>> from transformers import CLIPVisionConfig, CLIPVisionModel
        >>> config = CLIPVisionConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
        ...                           intermediate_size=96, image_size=32, patch_size=8)
        >>> [s.name for s in HFVisionAdapter(CLIPVisionModel(config)).sites(torch.zeros(1, 3, 32, 32))]
        ['encoder.layers.0.self_attn', 'encoder.layers.1.self_attn']
        """
        height, width = self._batch_size(batch)
        grid = (height // self.patch_size[0], width // self.patch_size[1])
        registers = int(getattr(self.config, "num_register_tokens", 0) or 0)
        prefix = [] if self.family in _NO_CLASS_TOKEN else ["cls"]
        kinds = tuple(prefix + ["register"] * registers + ["patch"] * (grid[0] * grid[1]))
        sites = []
        for order, path in enumerate(self._attention_paths):
            attn = self.encoder.get_submodule(path)
            head_dim = int(attn.head_dim)
            scale = getattr(attn, "scaling", None)
            if scale is None:
                scale = getattr(attn, "scale", head_dim**-0.5)
            sites.append(
                AttentionSite(
                    name=path,
                    module=path,
                    order=order,
                    num_heads=int(attn.q_proj.out_features) // head_dim,
                    head_dim=head_dim,
                    scale=float(scale),
                    grid=grid,
                    token_kinds=kinds,
                )
            )
        return sites

    def taps(self, site: AttentionSite, capture: Sequence[str]) -> list[Tap]:
        """Taps in execution order: ``q_proj``, ``k_proj``, ``v_proj`` outputs, then the layer output.

        Examples
        --------
        >>> from transformers import ViTConfig, ViTModel
        >>> config = ViTConfig(hidden_size=48, num_hidden_layers=1, num_attention_heads=3,
        ...                    intermediate_size=96, image_size=32, patch_size=8)
        >>> adapter = HFVisionAdapter(ViTModel(config))
        >>> [t.key for t in adapter.taps(adapter.sites(torch.zeros(1, 3, 32, 32))[0], ["v", "features"])]
        ['layers.0.attention.v_proj:output', 'layers.0:output']
        """
        check_capture(capture, self.name)
        taps = [Tap(f"{site.module}.{name}_proj") for name in ("q", "k", "v") if name in capture]
        if "features" in capture:
            taps.append(Tap(site.module.rsplit(".", 1)[0]))
        return taps

    def assemble(
        self, site: AttentionSite, tapped: Mapping[str, list[torch.Tensor]], capture: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Split the q/k/v projections into heads ``(B, H, N, D)``; ``features`` is ``(B, N, C)``."""
        out: dict[str, torch.Tensor] = {}
        for name in ("q", "k", "v"):
            if name in capture:
                out[name] = split_heads(single_value(tapped, Tap(f"{site.module}.{name}_proj"), "hf-vision"), site.num_heads)
        if "features" in capture:
            out["features"] = single_value(tapped, Tap(site.module.rsplit(".", 1)[0]), "hf-vision")
        check_token_counts(site, out, "was the model run on inputs of another size?")
        return out

    def output_tap(self, site: AttentionSite) -> Tap:
        """The attention output ``(B, N, H*D)``: the input of ``o_proj`` / ``out_proj``."""
        return Tap(self._output_projection(site), "input")

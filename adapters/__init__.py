"""Built-in adapters, one module per backbone family (installed as ``interpret_spectral.adapters``).

Importing this package registers every built-in adapter.  Each module imports its
backbone library lazily, so a missing optional dependency only matters when a model
of that family is probed.
"""

from interpret_spectral.adapters import (  # noqa: F401
    diffusers_unet, hf_vision, lens, mha, path, timm_eva, timm_vit, torchvision_vit, windowed,
)

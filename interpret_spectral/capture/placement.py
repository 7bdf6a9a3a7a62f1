"""Where a model runs: its device and dtype, and inputs moved to follow it.

``probe(..., device=, dtype=)`` moves the model (in place, as ``model.to()``); every
batch is then put on the model's device, floating-point batches in its dtype, so a
float16 or bfloat16 model on a GPU takes float32 images as they come.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from interpret_spectral.capture.contract import Adapter

__all__ = ["model_placement", "to_model", "place_model", "torch_dtype"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A floating torch dtype from its name (``"bfloat16"``) or itself.

    Examples
    --------
    >>> torch_dtype("bfloat16")
    torch.bfloat16
    """
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type, got {dtype}")
        return dtype
    key = str(dtype).replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)} (or a torch dtype), got {dtype!r}")
    return _DTYPES[key]


def model_placement(adapter: Adapter) -> tuple[torch.device | None, torch.dtype | None]:
    """Device and floating dtype of the module the adapter runs (its first parameter or buffer).

    Examples
    --------
    >>> from interpret_spectral.adapters.mha import MultiheadAttentionAdapter
    >>> model_placement(MultiheadAttentionAdapter(torch.nn.MultiheadAttention(4, 2).to(torch.bfloat16)))
    (device(type='cpu'), torch.bfloat16)
    """
    module = adapter.model_module()
    if not isinstance(module, torch.nn.Module):
        return None, None
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device, None
    return None, None


def to_model(adapter: Adapter, batch: Any) -> Any:
    """``batch`` on the model's device, floating-point tensors in the model's dtype (token ids stay ints).

    Examples
    --------
    >>> from interpret_spectral.adapters.mha import MultiheadAttentionAdapter
    >>> adapter = MultiheadAttentionAdapter(torch.nn.MultiheadAttention(4, 2).to(torch.float16))
    >>> to_model(adapter, torch.zeros(3, 1, 4)).dtype
    torch.float16
    """
    if not isinstance(batch, torch.Tensor):
        return batch
    device, dtype = model_placement(adapter)
    if device is None:
        return batch
    if batch.is_floating_point() and dtype is not None:
        return batch.to(device=device, dtype=dtype)
    return batch.to(device=device)


def place_model(model: Any, device: str | torch.device | None, dtype: str | torch.dtype | None) -> None:
    """Move ``model`` to ``device`` and cast it to ``dtype`` in place (nothing when both are None).

    Examples
    --------
    >>> layer = torch.nn.Linear(2, 2)
    >>> place_model(layer, "cpu", "bfloat16")
    >>> layer.weight.dtype
    torch.bfloat16
    """
    if device is None and dtype is None:
        return
    mover = getattr(model, "to", None)
    if not callable(mover):
        raise TypeError(f"device= and dtype= move the model with model.to(), which {type(model).__name__} lacks")
    kwargs: dict[str, Any] = {}
    if device is not None:
        try:
            kwargs["device"] = torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"device={device!r} is not a device torch knows ({error}); use e.g. 'cpu' or 'cuda:0'") from None
    if dtype is not None:
        kwargs["dtype"] = torch_dtype(dtype)
    mover(**kwargs)

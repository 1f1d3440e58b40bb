"""Tensors in and out of the database as safetensors bytes (never pickle: loading is safe)."""
from __future__ import annotations

import torch
from safetensors.torch import load, save

from app.editing.types import LayerDelta


def delta_to_bytes(delta: LayerDelta) -> bytes:
    return save(
        {
            "u": delta.u.detach().to("cpu", torch.float32).contiguous(),
            "v": delta.v.detach().to("cpu", torch.float32).contiguous(),
            "keys": delta.keys.detach().to("cpu", torch.float32).contiguous(),
        }
    )


def delta_from_bytes(layer: int, data: bytes) -> LayerDelta:
    t = load(data)
    return LayerDelta(layer=layer, u=t["u"], v=t["v"], keys=t["keys"])


def tensor_to_bytes(x: torch.Tensor) -> bytes:
    return save({"x": x.detach().to("cpu", torch.float32).contiguous()})


def tensor_from_bytes(data: bytes) -> torch.Tensor:
    return load(data)["x"]

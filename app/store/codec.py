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


def weights_to_bytes(weights: dict[int, torch.Tensor]) -> bytes:
    """Dense layer weights in their own dtype: converting would change the bits the hash proves."""
    return save({f"layer{layer}": w.detach().to("cpu").contiguous() for layer, w in weights.items()})


def weights_from_bytes(data: bytes) -> dict[int, torch.Tensor]:
    return {int(name[len("layer") :]): t for name, t in load(data).items()}

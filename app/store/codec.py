"""Tensors in and out of the database as safetensors bytes (never pickle: loading is safe).

Factors are stored in their own dtype (float32, or the 16-bit dtype the editor rounded them to
before applying them: the log holds exactly what the weights received), and safetensors records
it per tensor, so rows of any dtype replay side by side. A blob may be compressed losslessly
(`pack`): `KDZ`, the element width, then the elements' lower bytes as they are and their top
bytes (sign and exponent, which repeat) through zlib. Plain safetensors bytes (every older row) begin with
their header's length, never with `KDZ`.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import torch
from safetensors.torch import load, save

from app.editing.types import LayerDelta

MAGIC = b"KDZ"
FACTOR_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LEVEL = 6  # a batch's top bytes: a few ms
DENSE_LEVEL = 1  # a snapshot's 4.4 MB of top bytes: level 6 saves 1 % more for 5× the time


def pack(raw: bytes, lane: int, level: int = LEVEL) -> bytes:
    """`raw` (safetensors bytes whose elements are `lane` bytes wide, little-endian), compressed:
    the elements' top bytes (sign and exponent) through zlib, the lower bytes (mantissa, as good as
    random: zlib gains nothing on them and costs time) as they are, regrouped by position."""
    n = len(raw) - len(raw) % lane
    lanes = np.frombuffer(raw, dtype=np.uint8, count=n).reshape(-1, lane).T
    low = lanes[: lane - 1].tobytes()
    top = zlib.compress(lanes[lane - 1].tobytes() + raw[n:], level)
    return MAGIC + bytes([lane]) + struct.pack("<Q", n) + low + top


def unpack(data: bytes) -> bytes:
    """The safetensors bytes of a stored blob, compressed or not."""
    if data[:3] != MAGIC:
        return data
    lane = data[3]
    (n,) = struct.unpack("<Q", data[4:12])
    rows = n // lane
    low_end = 12 + rows * (lane - 1)
    rest = zlib.decompress(data[low_end:])
    lanes = np.empty((lane, rows), dtype=np.uint8)
    lanes[: lane - 1] = np.frombuffer(data, dtype=np.uint8, count=rows * (lane - 1), offset=12).reshape(lane - 1, rows)
    lanes[lane - 1] = np.frombuffer(rest, dtype=np.uint8, count=rows)
    return lanes.T.tobytes() + rest[rows:]


def _stored(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().to("cpu")
    return (x if x.dtype in FACTOR_DTYPES.values() else x.float()).contiguous()


def delta_to_bytes(delta: LayerDelta, compress: bool = True) -> bytes:
    tensors = {"u": _stored(delta.u), "v": _stored(delta.v), "keys": _stored(delta.keys)}
    raw = save(tensors)
    if not compress:
        return raw
    return pack(raw, max(t.element_size() for t in tensors.values()))


def delta_from_bytes(layer: int, data: bytes) -> LayerDelta:
    t = load(unpack(data))
    return LayerDelta(layer=layer, u=t["u"], v=t["v"], keys=t["keys"])


def tensor_to_bytes(x: torch.Tensor) -> bytes:
    return save({"x": x.detach().to("cpu", torch.float32).contiguous()})


def tensor_from_bytes(data: bytes) -> torch.Tensor:
    return load(unpack(data))["x"]


def weights_to_bytes(weights: dict[int, torch.Tensor], compress: bool = True) -> bytes:
    """Dense layer weights in their own dtype: converting would change the bits the hash proves."""
    tensors = {f"layer{layer}": w.detach().to("cpu").contiguous() for layer, w in weights.items()}
    raw = save(tensors)
    if not compress:
        return raw
    return pack(raw, max(t.element_size() for t in tensors.values()), DENSE_LEVEL)


def weights_from_bytes(data: bytes) -> dict[int, torch.Tensor]:
    return {int(name[len("layer") :]): t for name, t in load(unpack(data)).items()}

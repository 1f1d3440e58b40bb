"""The delta codec: factors kept in their own dtype, compressed losslessly, and every older row
(plain float32 safetensors) still read."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save

from app.editing.types import LayerDelta
from app.store.codec import (
    delta_from_bytes,
    delta_to_bytes,
    pack,
    unpack,
    weights_from_bytes,
    weights_to_bytes,
)


def _delta(dtype, seed=0) -> LayerDelta:
    g = torch.Generator().manual_seed(seed)
    return LayerDelta(
        3,
        (torch.randn(24, 5, generator=g) * 1e-3).to(dtype),
        (torch.randn(40, 5, generator=g) * 1e-2).to(dtype),
        torch.randn(40, 5, generator=g).to(dtype),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("compress", [True, False])
def test_factors_come_back_bit_for_bit_in_their_dtype(dtype, compress):
    d = _delta(dtype)
    data = delta_to_bytes(d, compress=compress)
    assert data.startswith(b"KDZ") == compress
    back = delta_from_bytes(3, data)
    for name in ("u", "v", "keys"):
        assert getattr(back, name).dtype == dtype
        assert torch.equal(getattr(back, name), getattr(d, name))
    assert torch.equal(back.matrix(), d.matrix())  # what a replay adds


def test_an_old_float32_row_still_reads():
    """Rows written before the codec compressed or rounded: plain safetensors float32."""
    d = _delta(torch.float32, seed=1)
    old = save({"u": d.u.contiguous(), "v": d.v.contiguous(), "keys": d.keys.contiguous()})
    back = delta_from_bytes(3, old)
    assert back.u.dtype == torch.float32 and torch.equal(back.matrix(), d.matrix())


def test_16_bit_rows_are_smaller_and_compression_helps_them():
    f32 = len(delta_to_bytes(_delta(torch.float32), compress=False))
    raw = len(delta_to_bytes(_delta(torch.bfloat16), compress=False))
    packed = len(delta_to_bytes(_delta(torch.bfloat16)))
    assert raw < 0.6 * f32
    assert packed < raw


@pytest.mark.parametrize("lane", [1, 2, 4])
@pytest.mark.parametrize("size", [0, 1, 7, 64, 1001])
def test_pack_is_lossless_at_any_length(lane, size):
    raw = bytes(torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(size), dtype=torch.uint8))
    assert unpack(pack(raw, lane)) == raw


def test_snapshot_weights_round_trip_compressed_and_plain():
    g = torch.Generator().manual_seed(2)
    w = {1: torch.randn(24, 40, generator=g), 2: torch.randn(24, 40, generator=g)}
    for data in (weights_to_bytes(w), weights_to_bytes(w, compress=False)):
        back = weights_from_bytes(data)
        assert all(torch.equal(back[k], w[k]) for k in w)

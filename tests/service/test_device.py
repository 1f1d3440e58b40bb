"""Where the model lives and in which dtype it serves: the weights are edited and replayed in float32
(the log's hash is over them); KEDIT_SERVE_DTYPE=bfloat16 serves from a copy that follows every version.
The CUDA tests run where a GPU is present (KEDIT_DEVICE=cuda) and skip cleanly elsewhere."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from app.api.main import create_app
from tests.utils.service import FACTS, wait_status

PROMPT = "The mother tongue of Danielle Darrieux is"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (KEDIT_DEVICE=cuda)")


def complete(c, **kw) -> dict:
    mid = c.get("/v1/models").json()["data"][0]["id"]
    r = c.post("/v1/completions", json={"model": mid, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def check_served_copy(c, dtype: torch.dtype) -> None:
    ctx = c.app.state.ctx
    engine, host = ctx.generation, ctx.host
    adapter = engine.lm.adapter
    assert engine.model is not engine.lm.model and next(engine.model.parameters()).dtype == dtype
    assert next(engine.lm.model.parameters()).dtype == torch.float32  # edited and hashed in float32
    before = {layer: adapter.weight(engine.model, layer).clone() for layer in host.layers}
    untouched = adapter.weight(engine.model, 0).clone()
    first = complete(c)

    e = wait_status(c, c.post("/edits", json=FACTS[0]).json()["ids"][0])
    assert e["status"] == "applied", e
    after = complete(c)
    assert after["system_fingerprint"] != first["system_fingerprint"]
    for layer in host.layers:
        served = adapter.weight(engine.model, layer)
        assert torch.equal(served, adapter.weight(engine.lm.model, layer).to(dtype))
        assert not torch.equal(served, before[layer])
    assert torch.equal(adapter.weight(engine.model, 0), untouched)
    # The version's hash is still proven over the float32 weights.
    assert c.get("/version").json()["weights_hash"] == host.editor.weights_hash()


def test_bfloat16_served_copy_follows_the_float32_weights(make_config):
    with TestClient(create_app(make_config(serve_dtype="bfloat16"))) as c:
        check_served_copy(c, torch.bfloat16)


@cuda
def test_service_on_cuda_edits_and_serves(make_config):
    with TestClient(create_app(make_config(device="cuda"))) as c:
        ctx = c.app.state.ctx
        assert next(ctx.host.editor.lm.model.parameters()).device.type == "cuda"
        e = wait_status(c, c.post("/edits", json=FACTS[0]).json()["ids"][0])
        assert e["status"] == "applied", e
        answer = complete(c)
        g = c.get("/generate", params={"prompt": PROMPT, "max_new_tokens": 8}).json()
        assert answer["choices"][0]["text"] == g["text"] and answer["system_fingerprint"].startswith(
            f"kedit-v{g['version']}-"
        )


@cuda
def test_cuda_bfloat16_served_copy(make_config):
    with TestClient(create_app(make_config(device="cuda", serve_dtype="bfloat16"))) as c:
        check_served_copy(c, torch.bfloat16)

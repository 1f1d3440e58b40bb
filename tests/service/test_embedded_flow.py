"""Embedded mode end to end (SQLite + in-process queue + worker thread, tiny model):
edit → applied → revert → base weights again; batch-mates survive a revert; restart replays."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.api.main import create_app
from app.service.host import ReplayMismatch
from app.store.models import LayerDeltaRow
from tests.utils.service import FACTS, wait_for, wait_status

PROMPTS = ["The mother tongue of Danielle Darrieux is", "Paris is the capital of", "Lionel Messi plays"]


def answers(c) -> list[str]:
    return [c.get("/generate", params={"prompt": p, "max_new_tokens": 4}).json()["text"] for p in PROMPTS]


def test_edit_then_revert_restores_the_base_weights(client):
    base = client.get("/version").json()
    assert base["version"] == 0 and base["weights_hash"] == base["base_hash"]
    base_answers = answers(client)

    r = client.post("/edits", json=FACTS[0])
    assert r.status_code == 202
    (accepted,) = r.json()["edits"]
    assert accepted["status"] == "queued" and r.json()["ids"] == [accepted["id"]]

    e = wait_status(client, accepted["id"])
    assert e["status"] == "applied", e
    assert e["version"] == 1 and e["batch_id"] == 1
    assert e["mpes_steps"] >= 1 and 0 <= e["prob_before"] <= 1 and 0 <= e["prob_after"] <= 1
    assert e["seconds"] > 0

    v1 = client.get("/version").json()
    assert v1["version"] == 1 and v1["weights_hash"] != base["base_hash"]
    g = client.get("/generate", params={"prompt": PROMPTS[0], "max_new_tokens": 2}).json()
    assert g["version"] == 1 and g["weights_hash"] == v1["weights_hash"]

    norms = client.get("/health/norms").json()
    assert [layer["layer"] for layer in norms["layers"]] == [1, 2]
    for layer in norms["layers"]:
        assert layer["delta_norm"] > 0 and len(layer["history"]) == 1 and layer["history"][0]["version"] == 1
        assert layer["growth"] == pytest.approx(layer["delta_norm"] / layer["base_norm"])
        assert layer["key_dim"] > 0 and layer["load"] == pytest.approx(1 / layer["key_dim"])
    assert norms["applied_edits"] == 1
    page = client.get("/ui").text
    assert f"1 applied edit over {norms['layers'][0]['key_dim']:,} key dimensions per layer" in page

    r = client.post(f"/edits/{e['id']}/revert")
    assert r.status_code == 202 and r.json()["revert_requested"] is True
    e = wait_status(client, e["id"], ("reverted",))
    assert e["reverted_version"] == 2

    v2 = client.get("/version").json()
    assert v2["version"] == 2 and v2["weights_hash"] == base["base_hash"]
    assert answers(client) == base_answers
    norms = client.get("/health/norms").json()
    assert norms["applied_edits"] == 0
    for layer in norms["layers"]:
        assert layer["delta_norm"] == 0.0 and layer["load"] == 0.0
        assert [h["version"] for h in layer["history"]] == [1, 2]

    r = client.post(f"/edits/{e['id']}/revert")
    assert r.status_code == 409
    assert r.json()["detail"] == f"edit {e['id']} is reverted, not applied: only applied edits can be reverted"


def test_revert_keeps_batch_mates_and_later_batches_and_restart_replays(make_config, tmp_path):
    cfg = make_config()
    with TestClient(create_app(cfg)) as c:
        base_hash = c.get("/version").json()["base_hash"]
        ids = c.post("/edits", json=FACTS[:3]).json()["ids"]
        first = [wait_status(c, i) for i in ids]
        assert {e["status"] for e in first} == {"applied"}
        assert len({e["batch_id"] for e in first}) == 1, "one request within B and T is one batch"
        later = wait_status(c, c.post("/edits", json=FACTS[3]).json()["ids"][0])
        assert later["batch_id"] != first[0]["batch_id"]

        wait_status(c, c.post(f"/edits/{ids[1]}/revert").json()["id"], ("reverted",))
        mates = [c.get(f"/edits/{i}").json() for i in (ids[0], ids[2])]
        assert {m["status"] for m in mates} == {"applied"}
        # The survivors moved to a new batch (their re-application); the later batch is untouched.
        assert mates[0]["batch_id"] == mates[1]["batch_id"] not in (first[0]["batch_id"], later["batch_id"])
        assert c.get(f"/edits/{later['id']}").json()["batch_id"] == later["batch_id"]
        head = c.get("/version").json()
        assert head["version"] == 3 and head["weights_hash"] != base_hash
        before_restart = answers(c)
        templates = list(c.app.state.ctx.worker.host.editor.templates)

    # A new process on the same log: base + live deltas in version order, proven by the hash.
    with TestClient(create_app(cfg)) as c:
        again = c.get("/version").json()
        assert (again["version"], again["weights_hash"]) == (head["version"], head["weights_hash"])
        assert answers(c) == before_restart
        ctx = c.app.state.ctx
        assert ctx.host.editor.batch_ids == [later["batch_id"], mates[0]["batch_id"]]
        # The worker's own copy replayed to the same bits.
        wait_for(lambda: ctx.worker.active, 60, "the worker to take the lock")
        assert ctx.worker.host.weights_hash == head["weights_hash"]
        # The context prefixes were generated once and kept in the log, not regenerated.
        assert ctx.worker.host.editor.templates == templates
        with ctx.sessions() as s:
            from app.store import repo

            assert repo.get_model_info(s).templates == templates


def test_start_refuses_when_the_log_does_not_replay(make_config):
    cfg = make_config()
    with TestClient(create_app(cfg)) as c:
        wait_status(c, c.post("/edits", json=FACTS[0]).json()["ids"][0])
        ctx = c.app.state.ctx
        with ctx.sessions() as s, s.begin():
            row = s.query(LayerDeltaRow).first()
            from app.store.codec import delta_from_bytes, delta_to_bytes

            d = delta_from_bytes(row.layer, row.data)
            d.u = d.u * 1.5  # a corrupted record
            s.execute(
                update(LayerDeltaRow)
                .where(LayerDeltaRow.batch_id == row.batch_id, LayerDeltaRow.layer == row.layer)
                .values(data=delta_to_bytes(d))
            )
    with pytest.raises(ReplayMismatch, match="refusing to serve"):
        with TestClient(create_app(cfg)):
            pass


def test_idempotency_key_returns_the_same_edits(client):
    h = {"Idempotency-Key": "order-42"}
    r1 = client.post("/edits", json=FACTS[:2], headers=h)
    r2 = client.post("/edits", json=FACTS[:2], headers=h)
    assert r1.status_code == r2.status_code == 202
    assert r1.json()["ids"] == r2.json()["ids"]
    assert r1.headers["Idempotent-Replayed"] == "false" and r2.headers["Idempotent-Replayed"] == "true"
    assert client.get("/edits").json()["total"] == 2
    r3 = client.post("/edits", json=FACTS[:2], headers={"Idempotency-Key": "order-43"})
    assert set(r3.json()["ids"]).isdisjoint(r1.json()["ids"])


def test_api_key_guards_mutating_endpoints(make_config):
    with TestClient(create_app(make_config(api_key="s3cret"))) as c:
        r = c.post("/edits", json=FACTS[0])
        assert r.status_code == 401 and "needs the API key" in r.json()["detail"]
        r = c.post("/edits", json=FACTS[0], headers={"X-API-Key": "s3creT"})
        assert r.status_code == 401 and r.json()["detail"] == "wrong API key"
        r = c.post("/edits", json=FACTS[0], headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        ok = c.post("/edits", json=FACTS[0], headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 202
        ok2 = c.post("/edits", json=FACTS[1], headers={"Authorization": "Bearer s3cret"})
        assert ok2.status_code == 202
        eid = ok.json()["ids"][0]
        wait_status(c, eid)
        r = c.post(f"/edits/{eid}/revert")
        assert r.status_code == 401
        # Reading needs no key.
        assert c.get(f"/edits/{eid}").status_code == 200
        assert c.get("/generate", params={"prompt": "Paris is"}).status_code == 200
        assert c.post(f"/edits/{eid}/revert", headers={"X-API-Key": "s3cret"}).status_code == 202


def test_list_filters_and_pages(client):
    ids = client.post("/edits", json=FACTS).json()["ids"]
    for i in ids:
        wait_status(client, i)
    wait_status(client, client.post(f"/edits/{ids[0]}/revert").json()["id"], ("reverted",))
    page = client.get("/edits", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 4 and [e["id"] for e in page["items"]] == ids[1:3]
    applied = client.get("/edits", params={"status": "applied"}).json()
    assert [e["id"] for e in applied["items"]] == ids[1:] and applied["total"] == 3
    reverted = client.get("/edits", params={"status": "reverted"}).json()
    assert [e["id"] for e in reverted["items"]] == ids[:1]


def test_health_ready_and_metrics(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] is True
    eid = client.post("/edits", json=FACTS[0]).json()["ids"][0]
    e = wait_status(client, eid)
    client.get("/generate", params={"prompt": "Paris is", "max_new_tokens": 2})
    text = client.get("/metrics").text
    assert 'kedit_edits{status="applied"} 1.0' in text
    assert 'kedit_edits{status="queued"} 0.0' in text
    assert "kedit_batch_seconds_count 1.0" in text
    assert f"kedit_mpes_steps_sum {float(e['mpes_steps'])}" in text
    assert "kedit_queue_depth 0.0" in text
    assert 'kedit_norm_growth{layer="1"}' in text and 'kedit_norm_growth{layer="2"}' in text
    assert "kedit_generate_seconds_count 1.0" in text
    assert "kedit_head_version 1.0" in text


def test_openapi_documents_the_contract(client):
    paths = client.get("/openapi.json").json()["paths"]
    for p in (
        "/edits",
        "/edits/{edit_id}",
        "/edits/{edit_id}/revert",
        "/generate",
        "/health/norms",
        "/health",
        "/ready",
        "/metrics",
        "/version",
    ):
        assert p in paths, p
    assert "oneOf" in paths["/edits"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    # Error answers are documented as what the service really sends: {"detail": ..., "errors": ...}.
    post = paths["/edits"]["post"]["responses"]
    assert post["422"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ErrorBody"
    assert {"401", "413", "415", "503"} <= set(post)
    assert {"404", "409"} <= set(paths["/edits/{edit_id}/revert"]["post"]["responses"])
    bad = client.post("/edits", json={"prompt": "no slot", "subject": "x", "target_new": "y"})
    assert bad.status_code == 422 and set(bad.json()) <= {"detail", "errors"}


def test_start_refuses_another_model_or_other_layers_on_the_same_log(make_config, tmp_path):
    from tests.utils.service import TINY_OVERRIDES
    from tests.utils.tiny import build_tiny_model

    cfg = make_config()
    with TestClient(create_app(cfg)):
        pass  # the log now belongs to this model and these layers
    other = tmp_path / "other-model"
    model, tok = build_tiny_model("llama", seed=1)
    model.save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(ReplayMismatch, match="written on base weights .* load the same model"):
        with TestClient(create_app(cfg.model_copy(update={"model_path": str(other)}))):
            pass
    moved = {**TINY_OVERRIDES, "layers": [2, 3]}
    with pytest.raises(ReplayMismatch, match=r"written for layers \[1, 2\] but this process edits \[2, 3\]"):
        with TestClient(create_app(cfg.model_copy(update={"edit_overrides": moved}))):
            pass

"""End to end on the real SmolLM2 with a real CounterFact fact, in both modes:
edit → applied → /generate says target_new → revert → /generate as before → norms recorded
→ restart the api → the same weights hash and the same answers."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import ServiceConfig
from app.service.context import ServiceContext
from tests.utils.service import wait_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def fact(shared_data) -> dict:
    # CounterFact case 0 (compact EasyEdit form): the subject slot goes back into the prompt.
    rec = json.loads((shared_data / "counterfact_extra" / "counterfact-edit.json").read_text())[0]
    assert rec["case_id"] == 0
    return {
        "prompt": rec["prompt"].replace(rec["subject"], "{}"),
        "subject": rec["subject"],
        "target_new": rec["target_new"],
        "target_true": rec["ground_truth"],
    }


def ask(c, fact) -> dict:
    prompt = fact["prompt"].format(fact["subject"])
    return c.get("/generate", params={"prompt": prompt, "max_new_tokens": 6}).json()


@pytest.mark.parametrize("mode", ["production", "embedded"])
def test_counterfact_edit_revert_restart(mode, fact, pg_url, redis_prefix, tmp_path, shared_data):
    corpus = shared_data / "corpus"  # C₀ from WikiText, cached once for every test on SmolLM2
    # Canaries on SmolLM2 are tested in test_guard_real_model.py; here they would only add minutes.
    if mode == "production":
        cfg = ServiceConfig(
            database_url=pg_url,
            redis_url="redis://127.0.0.1:6379/0",
            redis_prefix=redis_prefix,
            batch_wait_ms=50,
            sync_poll_s=0.5,
            stats_corpus=corpus,
            canaries=False,
        )
        worker = ServiceContext.open(cfg)
        worker.start_worker()

        def api():
            return TestClient(create_app(cfg, with_worker=False))
    else:
        cfg = ServiceConfig(
            database_url=f"sqlite:///{tmp_path / 'kedit.db'}", batch_wait_ms=50, stats_corpus=corpus, canaries=False
        )
        worker = None

        def api():
            return TestClient(create_app(cfg))

    try:
        with api() as c:
            base = ask(c, fact)
            assert base["version"] == 0
            assert fact["target_new"] not in base["text"]  # the model does not say it yet

            eid = c.post("/edits", json=fact).json()["ids"][0]
            e = wait_status(c, eid, timeout=900)
            assert e["status"] == "applied", e
            assert e["prob_after"] > e["prob_before"]
            edited = ask(c, fact)
            assert edited["version"] == 1
            assert edited["text"].strip().startswith(fact["target_new"]), edited

            assert c.post(f"/edits/{eid}/revert").status_code == 202
            wait_status(c, eid, ("reverted",), timeout=900)
            back = ask(c, fact)
            assert back["text"] == base["text"] and back["weights_hash"] == base["weights_hash"]

            norms = c.get("/health/norms").json()
            assert [layer["layer"] for layer in norms["layers"]] == [4, 5, 6, 7, 8]
            for layer in norms["layers"]:
                assert [h["version"] for h in layer["history"]] == [1, 2]
                assert layer["history"][0]["growth"] > 0 and layer["delta_norm"] == 0.0

            # Edit again, so that the restart has something to rebuild.
            e2 = wait_status(c, c.post("/edits", json=fact).json()["ids"][0], timeout=900)
            assert e2["status"] == "applied"
            before_restart = ask(c, fact)
            assert before_restart["version"] == 3
        with api() as c:
            after_restart = ask(c, fact)
            assert after_restart["weights_hash"] == before_restart["weights_hash"]
            assert after_restart["text"] == before_restart["text"]
    finally:
        if worker is not None:
            worker.close()


def test_revert_one_fact_of_a_batch_keeps_the_other(shared_data, tmp_path):
    """docs/method.md §4 on the real model: two facts in one batch; reverting one brings its old
    answer back while the other (re-applied from its stored z*) keeps its new one."""
    recs = json.loads((shared_data / "counterfact_extra" / "counterfact-edit.json").read_text())
    darrieux, apple = (
        {
            "prompt": r["prompt"].replace(r["subject"], "{}"),
            "subject": r["subject"],
            "target_new": r["target_new"],
            "target_true": r["ground_truth"],
        }
        for r in (recs[0], recs[5])
    )
    assert (darrieux["target_new"], apple["subject"], apple["target_new"]) == ("English", "Apple A5", "Google")
    cfg = ServiceConfig(
        database_url=f"sqlite:///{tmp_path / 'kedit.db'}",
        batch_wait_ms=200,
        stats_corpus=shared_data / "corpus",
        canaries=False,
    )
    with TestClient(create_app(cfg)) as c:
        base_apple = ask(c, apple)["text"]
        ids = c.post("/edits", json=[darrieux, apple]).json()["ids"]
        edits = [wait_status(c, i, timeout=1200) for i in ids]
        assert [e["status"] for e in edits] == ["applied", "applied"] and edits[0]["batch_id"] == edits[1]["batch_id"]
        assert ask(c, darrieux)["text"].strip().startswith("English")
        assert ask(c, apple)["text"].strip().startswith("Google")

        c.post(f"/edits/{ids[1]}/revert")
        wait_status(c, ids[1], ("reverted",), timeout=1200)
        assert not ask(c, apple)["text"].strip().startswith("Google")
        assert ask(c, apple)["text"].split()[0] == base_apple.split()[0]  # "Apple ..." again
        assert ask(c, darrieux)["text"].strip().startswith("English")
        kept = c.get(f"/edits/{ids[0]}").json()
        assert kept["status"] == "applied" and kept["batch_id"] != edits[0]["batch_id"]

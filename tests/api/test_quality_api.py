"""GET /health/quality, the canary gauges and GET /edits?subject= on the embedded service (tiny model)."""

from __future__ import annotations

from tests.utils.service import FACTS, wait_status


def test_quality_has_the_unedited_model_and_every_version(client):
    r = client.post("/edits", json=FACTS[1])
    assert r.status_code == 202
    wait_status(client, r.json()["ids"][0], ("applied",))
    q = client.get("/health/quality").json()
    assert q["enabled"] is True and q["policy"] == "warn"
    assert set(q["thresholds"]) == {
        "facts_lost",
        "facts_lost_total",
        "ppl_rise",
        "ppl_rise_total",
        "entropy_drop",
        "entropy_drop_total",
    }
    assert q["baseline"]["version"] == 0 and q["baseline"]["live_edits"] == 0
    assert [p["version"] for p in q["history"]] == [0, 1]
    latest = q["latest"]
    assert latest["version"] == 1 and latest["live_edits"] == 1
    assert latest["perplexity"] > 1 and latest["entropy"] > 0
    assert latest["facts_kept"] == latest["facts_total"] - len(latest["lost"])
    assert latest["guard"]["policy"] == "warn" and latest["guard"]["verdict"] in ("ok", "warn")
    metrics = client.get("/metrics").text
    for name in (
        "kedit_canary_facts_total",
        "kedit_canary_facts_kept",
        "kedit_canary_perplexity",
        "kedit_canary_entropy",
        "kedit_guard_refused_edits",
    ):
        assert f"\n{name} " in metrics, name
    assert "kedit_canary_version 1.0" in metrics
    assert client.get("/ready").json()["checks"]["canaries_scored"] is True


def test_edits_can_be_searched_by_subject(client):
    facts = [dict(FACTS[0]), dict(FACTS[2]), dict(FACTS[0], subject="100% Darrieux_fan")]
    r = client.post("/edits", json=facts)
    assert r.status_code == 202
    subjects = lambda q: [e["subject"] for e in client.get("/edits", params={"subject": q}).json()["items"]]  # noqa: E731
    assert subjects("darrieux") == ["Danielle Darrieux", "100% Darrieux_fan"]
    assert subjects("MESSI") == ["Lionel Messi"]
    # LIKE's wildcards are matched as the characters they are.
    assert subjects("%") == ["100% Darrieux_fan"] and subjects("_") == ["100% Darrieux_fan"]
    assert client.get("/edits", params={"subject": "nobody"}).json()["total"] == 0

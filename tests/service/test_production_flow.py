"""Production mode in one test process: api apps (TestClient) and workers with their own model
copies, talking only through the real PostgreSQL and Redis."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.service.context import ServiceContext
from app.store import repo
from app.store.db import transaction
from tests.utils.service import FACTS, wait_for, wait_status

pytestmark = pytest.mark.integration

PROMPTS = ["The mother tongue of Danielle Darrieux is", "Paris is the capital of"]


def answers(c) -> list[str]:
    return [c.get("/generate", params={"prompt": p, "max_new_tokens": 4}).json()["text"] for p in PROMPTS]


@pytest.fixture
def start_worker(prod_config):
    started = []

    def start(**over) -> ServiceContext:
        ctx = ServiceContext.open(prod_config(**over))
        ctx.start_worker()
        started.append(ctx)
        return ctx

    yield start
    for ctx in started:
        ctx.close()


def api(cfg):
    return TestClient(create_app(cfg, with_worker=False))


def test_edit_revert_norms_and_restart(prod_config, start_worker):
    cfg = prod_config()
    worker = start_worker()
    with api(cfg) as c:
        base = c.get("/version").json()
        base_answers = answers(c)
        eid = c.post("/edits", json=FACTS[0]).json()["ids"][0]
        e = wait_status(c, eid)
        assert e["status"] == "applied" and e["version"] == 1
        g = c.get("/generate", params={"prompt": PROMPTS[0], "max_new_tokens": 2}).json()
        assert g["version"] == 1 and g["weights_hash"] == worker.worker.host.weights_hash != base["base_hash"]

        assert c.post(f"/edits/{eid}/revert").status_code == 202
        wait_status(c, eid, ("reverted",))
        assert answers(c) == base_answers
        v = c.get("/version").json()
        assert v["version"] == 2 and v["weights_hash"] == base["base_hash"]
        norms = c.get("/health/norms").json()
        assert all([h["version"] for h in layer["history"]] == [1, 2] for layer in norms["layers"])

        ids = c.post("/edits", json=FACTS[1:3]).json()["ids"]
        for i in ids:
            wait_status(c, i)
        c.get("/generate", params={"prompt": "x is", "max_new_tokens": 1})  # sync before reading
        head = c.get("/version").json()
        before_restart = answers(c)
    # The api process restarts: it rebuilds base + live deltas and proves the stored hash.
    with api(cfg) as c:
        again = c.get("/version").json()
        assert (again["version"], again["weights_hash"]) == (head["version"], head["weights_hash"])
        assert answers(c) == before_restart


def test_two_api_replicas_see_each_new_version(prod_config, start_worker):
    cfg = prod_config()
    start_worker()
    with api(cfg) as a, api(cfg) as b:
        eid = a.post("/edits", json=FACTS[0]).json()["ids"][0]
        assert wait_status(b, eid)["status"] == "applied"  # the log is shared
        # Replica b learns of the version by pub/sub (no request to it needed).
        wait_for(lambda: b.get("/version").json()["version"] == 1, 60, "replica b to reach version 1")
        wait_for(lambda: a.get("/version").json()["version"] == 1, 60, "replica a to reach version 1")
        va, vb = a.get("/version").json(), b.get("/version").json()
        assert va["weights_hash"] == vb["weights_hash"] != va["base_hash"]
        assert answers(a) == answers(b)


def test_redis_losing_the_stream_loses_no_edit(prod_config, start_worker):
    cfg = prod_config()
    w = start_worker()
    with api(cfg) as c:
        wait_for(lambda: w.worker.active, 60, "the worker to take the lock")
        first = wait_status(c, c.post("/edits", json=FACTS[0]).json()["ids"][0])
        assert first["status"] == "applied"
        r = redis.Redis.from_url(cfg.redis_url)
        r.delete(f"{cfg.redis_prefix}:edits")  # Redis restarted empty: stream and group gone
        eid = c.post("/edits", json=FACTS[1]).json()["ids"][0]  # XADD recreates a stream with no group
        assert wait_status(c, eid)["status"] == "applied"
        # An api that committed its rows and died before XADD: the worker finds them when idle.
        with transaction(c.app.state.ctx.sessions) as s:
            (row,) = repo.insert_edits(s, [FACTS[2]])
        assert wait_status(c, row.id)["status"] == "applied"
        r.close()


def test_standby_worker_takes_over(prod_config, start_worker):
    cfg = prod_config()
    first, second = start_worker(), start_worker()
    wait_for(lambda: first.worker.active or second.worker.active, 60, "one worker to become active")
    active, standby = (first, second) if first.worker.active else (second, first)
    assert not standby.worker.active
    with api(cfg) as c:
        assert wait_status(c, c.post("/edits", json=FACTS[0]).json()["ids"][0])["status"] == "applied"
        active.close()  # the active worker goes away; its advisory lock frees
        wait_for(lambda: standby.worker.active, 60, "the standby to take over")
        e = wait_status(c, c.post("/edits", json=FACTS[1]).json()["ids"][0])
        assert e["status"] == "applied" and e["version"] == 2
        assert standby.worker.host.version == 2


def test_edits_accepted_while_redis_is_down_are_applied_later(prod_config, start_worker):
    """Postgres is the truth: with the queue unreachable the api still accepts (rows first),
    reports itself not ready, and a worker refills the queue from the rows."""
    down = prod_config(redis_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    with api(down) as c:
        r = c.post("/edits", json=FACTS[0])
        assert r.status_code == 202 and r.json()["edits"][0]["status"] == "queued"
        eid = r.json()["ids"][0]
        ready = c.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["queue"] is False
    start_worker()  # same database and prefix, the real Redis
    with api(prod_config()) as c:
        assert wait_status(c, eid)["status"] == "applied"


def test_ids_beyond_the_column_range_are_not_found(prod_config):
    with api(prod_config()) as c:
        for path in ("/edits/2147483648", "/edits/9223372036854775807"):
            r = c.get(path)
            assert r.status_code == 404 and "no edit with id" in r.json()["detail"], r.text
        r = c.post("/edits/2147483648/revert")
        assert r.status_code == 404

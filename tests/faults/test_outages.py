"""Server outages (issue 5), on PostgreSQL and Redis servers that this test owns.

The machine's shared servers (5432, 6379) are used by other tests at the same time, so this
test starts its own: `initdb` + `pg_ctl` on a free port (as the postgres user) and a
`redis-server` on another free port, and stops or flushes only those.

- Redis flushed under a running worker, and Redis restarted empty: edits accepted meanwhile
  (202 while Redis is down) are queued again from PostgreSQL and applied; no restart.
- PostgreSQL stopped (mid-batch): POST /edits answers 503 with a reason, reads of the log 503,
  /ready fails and says the database is down, /generate keeps serving the weights it holds;
  when PostgreSQL returns, the same api and worker processes carry on and apply everything.
"""

from __future__ import annotations

import httpx
import pytest

from tests.utils import faults as sup

pytestmark = [pytest.mark.faults, pytest.mark.integration]

PROBE = {"prompt": "The mother tongue of Danielle Darrieux is", "max_new_tokens": 4}


def _post(url: str, body) -> httpx.Response:
    return httpx.post(f"{url}/edits", json=body, timeout=60)


def test_redis_and_postgres_outages(warm_cache, own_postgres, own_redis, cluster_factory):
    import random

    rng = random.Random(7)
    db_url, _drop = sup.create_database(own_postgres.admin_url)
    env = sup.service_env(warm_cache, db_url, own_redis.url, "kedit-outage")
    cl = cluster_factory(env)
    api = cl.start_api()
    worker = cl.start("worker")
    engine = sup.sql_engine(db_url)
    accepted: set[int] = set()
    n = 0

    def submit(k: int, expect: int = 202) -> httpx.Response:
        nonlocal n
        r = _post(api.url, [sup.fact(rng, n + i) for i in range(k)])
        n += k
        assert r.status_code == expect, r.text
        if expect == 202:
            accepted.update(r.json()["ids"])
        return r

    try:
        submit(2)
        sup.wait_for(lambda: sup.settled(engine), 180, "the first edits to apply")

        # 1. Redis loses everything under a running worker, right after edits were queued.
        submit(3)
        own_redis.client().flushall()
        sup.wait_for(lambda: sup.settled(engine), 180, "edits lost from Redis to be refilled and applied")

        # 2. Redis down: edits are still accepted (the rows are the truth), readiness says why.
        own_redis.stop()
        submit(2)
        r = httpx.get(f"{api.url}/ready", timeout=30)
        assert r.status_code == 503 and r.json()["checks"]["queue"] is False, r.text
        assert httpx.get(f"{api.url}/generate", params=PROBE, timeout=60).status_code == 200
        own_redis.start()  # back, and empty
        submit(2)
        sup.wait_for(lambda: sup.settled(engine), 180, "edits accepted while Redis was down to be applied")
        sup.wait_for(lambda: httpx.get(f"{api.url}/ready", timeout=30).status_code == 200, 60, "the api to be ready")

        # 3. PostgreSQL stops, likely in the middle of the batch these edits start.
        before = httpx.get(f"{api.url}/generate", params=PROBE, timeout=60).json()
        submit(3)
        own_postgres.stop("immediate")
        r = _post(api.url, sup.fact(rng, n))
        assert r.status_code == 503, r.text
        assert "database" in r.json()["detail"] and r.headers.get("Retry-After")
        for path in ("/edits/1", "/edits"):
            r = httpx.get(f"{api.url}{path}", timeout=60)
            assert r.status_code == 503 and "database" in r.json()["detail"], (path, r.status_code, r.text)
        r = httpx.get(f"{api.url}/ready", timeout=60)
        assert r.status_code == 503 and r.json()["checks"]["database"] is False, r.text
        for _ in range(3):
            g = httpx.get(f"{api.url}/generate", params=PROBE, timeout=60)
            assert g.status_code == 200, g.text
            assert g.json()["version"] >= before["version"]
        assert httpx.post(f"{api.url}/generate", json=PROBE, timeout=60).status_code == 200
        assert httpx.get(f"{api.url}/health", timeout=30).status_code == 200
        assert httpx.get(f"{api.url}/metrics", timeout=60).status_code == 200

        # Keep it down until the worker has tried (and failed) to take the writer lock again a
        # few times: a worker that cannot live through that would have exited by now.
        sup.wait_for(
            lambda: not worker.alive() or worker.tail(20_000).count("cannot reach the database") >= 3,
            120,
            "the worker to retry the database while it is down",
        )
        assert worker.alive(), f"the worker died while PostgreSQL was down:\n{worker.tail()}"
        assert httpx.get(f"{api.url}/generate", params=PROBE, timeout=60).status_code == 200

        # ... and comes back: no process restarts, the work resumes.
        own_postgres.start()

        def accepted_again() -> bool:
            r = _post(api.url, sup.fact(rng, 10_000 + len(accepted)))
            assert r.status_code in (202, 503), r.text
            if r.status_code == 202:
                accepted.update(r.json()["ids"])
            return r.status_code == 202

        sup.wait_for(accepted_again, 120, "POST /edits to be accepted again", interval=0.5)
        submit(2)
        sup.wait_for(lambda: sup.settled(engine), 240, "the worker to resume and apply everything")
        sup.wait_for(lambda: httpx.get(f"{api.url}/ready", timeout=30).status_code == 200, 60, "the api to be ready")
        assert api.alive() and worker.alive(), "a process died during the outages"
        assert len(cl.procs) == 2, "no process was restarted"

        state = sup.log_state(engine)
        sup.check_settled(state, accepted)
        assert set(state["edits"]) == accepted, "a request answered 503 left rows behind"
        sup.check_applied_at_most_once(state)
        sup.check_head_served(api.url, state, warm_cache, db_url)
        applied = sum(1 for e in state["edits"].values() if e["status"] == "applied")
        print(f"\noutages: {len(state['edits'])} edits, {applied} applied, {len(state['versions'])} versions")
    finally:
        engine.dispose()
        cl.close()

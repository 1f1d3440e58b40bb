"""Two kill points the random trials reach only by chance (issue 15): SIGKILL inside a revert,
after its new weights are computed and before its commit; and SIGKILL between a batch's database
commit and its XACK while clients keep posting. Each is checked where it landed (the revert left
nothing half-done; the committed batch's stream entries are still pending) and at the end with
the crash trials' checks: every accepted edit applied, failed with a reason or reverted if asked;
none applied twice; the api, a fresh in-process replay and `kedit verify` serve the head hash."""

from __future__ import annotations

import random
import signal
import threading
import time

import httpx
import pytest
import redis

from tests.utils import faults as sup

pytestmark = [pytest.mark.faults, pytest.mark.integration]

REQUESTS_PER_CLIENT = 24 if sup.LONG else 8


def _died_by_fault(w, trial: str) -> None:
    sup.wait_for(lambda: not w.alive(), 240, f"{trial}: the armed worker to die")
    assert w.popen.wait(timeout=60) == -signal.SIGKILL, w.tail()
    assert "fault injection: SIGKILL" in w.tail(), f"{trial}: the fault point was never reached:\n{w.tail()}"


def test_kills_inside_a_revert_and_between_commit_and_ack_under_load(warm_cache, pg_url, redis_prefix, cluster_factory):
    env = sup.service_env(warm_cache, pg_url, sup.REDIS, redis_prefix, KEDIT_BATCH_SIZE="4")
    cl = cluster_factory(env)
    api = cl.start_api()
    engine = sup.sql_engine(pg_url)
    rng = random.Random(15)
    client = httpx.Client(base_url=api.url, timeout=60)
    rc = redis.Redis.from_url(sup.REDIS, decode_responses=True)
    accepted: set[int] = set()
    reverts: set[int] = set()
    try:
        # 1. Some applied edits, by a clean worker.
        r = client.post("/edits", json=[sup.fact(rng, i) for i in range(4)])
        assert r.status_code == 202, r.text
        accepted.update(r.json()["ids"])
        w = cl.start("worker")
        sup.wait_for(lambda: sup.settled(engine), 240, "the first edits to settle")
        cl.stop(w, sig=signal.SIGKILL)
        state = sup.log_state(engine)
        live = sorted(e for e, row in state["edits"].items() if row["status"] == "applied")
        assert live, state["edits"]

        # 2. A revert killed after its weights were computed, before its commit: nothing of it is in
        # the log (no new version, the edit still applied and still asked to be reverted).
        victim = live[0]
        head_before = state["versions"][-1]["id"]
        assert client.post(f"/edits/{victim}/revert").status_code == 202
        reverts.add(victim)
        w = cl.start("worker", fault="worker_revert_before_commit:kill")
        _died_by_fault(w, "revert")
        state = sup.log_state(engine)
        sup.check_applied_at_most_once(state)
        assert state["versions"][-1]["id"] == head_before
        assert state["edits"][victim]["status"] == "applied" and state["edits"][victim]["revert_requested"]

        # 3. Under load: clients keep posting while a worker dies between a commit and its XACK
        # (its second commit: the first may be the revert left over from step 2).
        lock = threading.Lock()
        errors: list[str] = []

        def post_for_a_while(seed: int) -> None:
            local = random.Random(seed)
            with httpx.Client(base_url=api.url, timeout=60) as c:
                for i in range(REQUESTS_PER_CLIENT):
                    time.sleep(0.3)
                    facts = [sup.fact(local, 1000 * seed + 10 * i + j) for j in range(local.randint(1, 3))]
                    resp = c.post("/edits", json=facts)
                    if resp.status_code != 202:
                        errors.append(f"{resp.status_code} {resp.text[:200]}")
                        continue
                    with lock:
                        accepted.update(resp.json()["ids"])

        w = cl.start("worker", fault="worker_after_commit:kill@2", log_level="info")
        sup.wait_for(lambda: "writer lock acquired" in w.tail() or not w.alive(), 180, "the armed worker to start")
        clients = [threading.Thread(target=post_for_a_while, args=(s,), daemon=True) for s in (1, 2, 3)]
        for t in clients:
            t.start()
        _died_by_fault(w, "commit/XACK")
        state = sup.log_state(engine)
        sup.check_applied_at_most_once(state)
        pending = rc.xpending(f"{redis_prefix}:edits", f"{redis_prefix}:workers")
        assert pending["pending"] > 0, "killed between the commit and XACK but nothing is pending"
        w = cl.start("worker")  # takes over while the clients may still post
        for t in clients:
            t.join(timeout=120)
        assert not errors, errors[:5]

        sup.wait_for(lambda: sup.settled(engine), 300, "the last worker to settle every edit")
        state = sup.log_state(engine)
        sup.check_settled(state, accepted, reverts)
        sup.check_applied_at_most_once(state)
        assert state["edits"][victim]["status"] == "reverted"
        sup.check_head_served(api.url, state, warm_cache, pg_url, env)
        print(f"\n{len(accepted)} edits accepted under load, {len(state['versions'])} versions")
    finally:
        client.close()
        rc.close()
        engine.dispose()

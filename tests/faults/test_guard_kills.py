"""SIGKILL of the worker in the middle of a guarded batch (policy reject): after its canaries were
scored, and while the guard writes one group of the batch on trial. Neither leaves anything in
the log; the next worker redoes the batch. At the end, with the crash trials' checks: every
accepted edit applied or failed with a reason, none applied twice, the api, a fresh replay and
`kedit verify` serve the head hash, and every version has its canary scores."""

from __future__ import annotations

import random
import signal

import httpx
import pytest
from sqlalchemy import text

from tests.utils import faults as sup

pytestmark = [pytest.mark.faults, pytest.mark.integration]

# Bounds of 0: a batch that raises the held-out perplexity or lowers the generation entropy at
# all is over them, so the guard bisects most batches of a random tiny model.
STRICT = dict(KEDIT_GUARD="reject", KEDIT_GUARD_PPL_RISE="0", KEDIT_GUARD_ENTROPY_DROP="0", KEDIT_BATCH_SIZE="4")


def _kill_at(cl, client, engine, rng, accepted: set[int], fault: str, n0: int) -> int:
    """Post batches of 4 until the armed worker dies at `fault` (a batch the guard passes whole
    never reaches the bisection); returns how many facts were posted."""
    n = n0
    w = cl.start("worker", fault=fault)
    for _ in range(6):
        r = client.post("/edits", json=[sup.fact(rng, n + j) for j in range(4)])
        assert r.status_code == 202, r.text
        accepted.update(r.json()["ids"])
        n += 4
        sup.wait_for(lambda: not w.alive() or sup.settled(engine), 300, f"the batch under {fault}")
        if not w.alive():
            break
    assert w.popen.wait(timeout=60) == -signal.SIGKILL, f"{fault} was never reached:\n{w.tail()}"
    assert "fault injection: SIGKILL" in w.tail()
    state = sup.log_state(engine)
    sup.check_applied_at_most_once(state)
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM edits WHERE status = 'applying'")).scalar() > 0, (
            "the killed batch should be left `applying` for the next worker"
        )
    return n


def test_kills_inside_a_guarded_batch_lose_nothing(warm_cache, pg_url, redis_prefix, cluster_factory):
    env = sup.service_env(warm_cache, pg_url, sup.REDIS, redis_prefix, **STRICT)
    cl = cluster_factory(env)
    api = cl.start_api()
    engine = sup.sql_engine(pg_url)
    rng = random.Random(14)
    client = httpx.Client(base_url=api.url, timeout=60)
    accepted: set[int] = set()
    try:
        n = _kill_at(cl, client, engine, rng, accepted, "worker_guard_scored:kill", 0)
        n = _kill_at(cl, client, engine, rng, accepted, "worker_guard_bisect:kill@2", n)
        # The last worker guards with bounds that a tiny model's edits stay under, so the redone
        # batches are committed (the armed workers' bounds of 0 would refuse every fact).
        cl.start(
            "worker",
            extra_env={
                "KEDIT_GUARD_PPL_RISE": "100",
                "KEDIT_GUARD_PPL_RISE_TOTAL": "100",
                "KEDIT_GUARD_ENTROPY_DROP": "1",
                "KEDIT_GUARD_ENTROPY_DROP_TOTAL": "1",
            },
        )
        sup.wait_for(lambda: sup.settled(engine), 300, "a clean worker to settle every edit")
        state = sup.log_state(engine)
        sup.check_settled(state, accepted)
        sup.check_applied_at_most_once(state)
        failed = [e for e, row in state["edits"].items() if row["status"] == "failed"]
        with engine.connect() as c:
            reasons = [r for (r,) in c.execute(text("SELECT error FROM edits WHERE status = 'failed'"))]
            scored = {v for (v,) in c.execute(text("SELECT version FROM quality_scores"))}
        assert all(r.startswith("refused by the quality guard: ") for r in reasons), reasons
        assert scored == {0} | {v["id"] for v in state["versions"]}, "every version has its canary scores"
        assert state["versions"], "the redone batches were committed"
        sup.check_head_served(api.url, state, warm_cache, pg_url, env)
        print(
            f"\n{len(accepted)} edits accepted, {len(failed)} refused by the guard, {len(state['versions'])} versions"
        )
    finally:
        client.close()
        engine.dispose()

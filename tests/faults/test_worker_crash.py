"""kill -9 of the worker at random points of a batch, over seeded trials (issue 5).

One api process stays up; each trial queues a few new facts (and sometimes asks for a revert),
then starts a worker armed with one fault: SIGKILL while the target vectors are optimised
(a timer fired a random few ms after the batch was claimed), right after the database commit
and before XACK, or after XACK and before the version is announced. The next trial's worker
recovers what the dead one left, and may die itself. A clean worker finishes at the end. Then:
every accepted edit ended applied, failed with a reason, or reverted (if asked); none was
applied twice; and the api, a fresh in-process replay and `kedit verify` all agree with the
hash the log stored at its head. The at-most-once check also runs after every single kill.
"""

from __future__ import annotations

import os
import random
import signal

import httpx
import pytest
import redis

from tests.utils import faults as sup

pytestmark = [pytest.mark.faults, pytest.mark.integration]

TRIALS = int(os.environ.get("KEDIT_CRASH_TRIALS", 60 if sup.LONG else 12))
SEED = int(os.environ.get("KEDIT_FAULT_SEED", "5"))


def _fault(rng: random.Random) -> str:
    kind = rng.choice(["optimising", "optimising", "after_commit", "after_ack", "claimed"])
    if kind == "optimising":
        return f"worker_claimed:kill_after={rng.randint(5, 150)}"
    if kind == "claimed":
        return "worker_claimed:kill"
    nth = rng.choice([1, 1, 2])
    return f"worker_{kind}:kill@{nth}"


def test_worker_killed_at_random_points_loses_nothing_and_applies_nothing_twice(
    warm_cache, pg_url, redis_prefix, cluster_factory
):
    env = sup.service_env(warm_cache, pg_url, sup.REDIS, redis_prefix)
    cl = cluster_factory(env)
    api = cl.start_api()
    engine = sup.sql_engine(pg_url)
    rng = random.Random(SEED)
    client = httpx.Client(base_url=api.url, timeout=60)
    accepted: set[int] = set()
    reverts: set[int] = set()
    fired: list[str] = []
    mid_batch = 0
    redis_client = redis.Redis.from_url(sup.REDIS, decode_responses=True)
    n = 0
    try:
        for trial in range(TRIALS):
            k = rng.randint(2, 4)
            facts = [sup.fact(rng, n + j) for j in range(k)]
            n += k
            if rng.random() < 0.5:
                r = client.post("/edits", json=facts)
                assert r.status_code == 202, r.text
                accepted.update(r.json()["ids"])
            else:
                for f in facts:
                    r = client.post("/edits", json=f)
                    assert r.status_code == 202, r.text
                    accepted.update(r.json()["ids"])
            if rng.random() < 0.3:
                state = sup.log_state(engine)
                live = sorted(e for e, row in state["edits"].items() if row["status"] == "applied" and e not in reverts)
                if live:
                    eid = rng.choice(live)
                    r = client.post(f"/edits/{eid}/revert")
                    assert r.status_code == 202, r.text
                    reverts.add(eid)

            fault = _fault(rng)
            w = cl.start("worker", fault=fault)
            sup.wait_for(
                lambda w=w: not w.alive() or sup.settled(engine),
                240,
                f"trial {trial}: the worker ({fault}) to die or finish",
            )
            if w.alive():  # all work done before the fault point came round: kill -9 it idle
                w.popen.send_signal(signal.SIGKILL)
            rc = w.popen.wait(timeout=60)
            assert rc == -signal.SIGKILL, f"trial {trial}: worker exited {rc}, not by SIGKILL:\n{w.tail()}"
            died_by_fault = "fault injection: SIGKILL" in w.tail()
            fired.append(fault if died_by_fault else f"{fault} (killed from outside: the work was done first)")
            state = sup.log_state(engine)
            sup.check_applied_at_most_once(state)
            # Where did it die? Edits left `applying` = inside a batch, before its commit; a batch
            # committed but its stream entries unacked = between the commit and XACK.
            applying = [e for e, row in state["edits"].items() if row["status"] == "applying"]
            if died_by_fault and fault == "worker_claimed:kill":
                assert applying, f"trial {trial}: killed at the claim but no edit is left `applying`"
            if died_by_fault and fault.startswith("worker_after_commit"):
                pending = redis_client.xpending(f"{redis_prefix}:edits", f"{redis_prefix}:workers")
                assert pending["pending"] > 0, f"trial {trial}: killed before XACK but nothing is pending"
            if applying:
                mid_batch += 1

        # A clean worker finishes whatever the dead ones left.
        w = cl.start("worker")
        sup.wait_for(lambda: sup.settled(engine), 300, "the last worker to settle every edit")
        state = sup.log_state(engine)
        sup.check_settled(state, accepted, reverts)
        sup.check_applied_at_most_once(state)
        # Every process serves base + the live log (the worker wrote the head hash itself).
        head = sup.check_head_served(api.url, state, warm_cache, pg_url, env)
        # A restarted worker proves the same replay before it takes the lock, and stays up.
        cl.stop(w)
        w2 = cl.start("worker", log_level="info")
        sup.wait_for(
            lambda: "writer lock acquired" in w2.tail() or not w2.alive(),
            180,
            "the restarted worker to replay the log and take the lock",
        )
        assert (
            f"replayed {len([b for b in state['batches'] if b['removed_version'] is None])} live batches "
            f"up to version {head['id']}" in w2.tail()
        ), w2.tail()
        assert w2.alive(), w2.tail()
    finally:
        client.close()
        redis_client.close()
        engine.dispose()

    reached = [f for f in fired if "killed from outside" not in f]
    print(f"\n{len(reached)}/{len(fired)} faults fired ({mid_batch} kills left a batch half-done): {fired}")
    print(
        f"{len(accepted)} edits accepted, {len(reverts)} reverts, {len(state['versions'])} versions; "
        f"{sum(1 for e in state['edits'].values() if e['status'] == 'failed')} failed"
    )
    assert len(fired) == TRIALS
    assert len(reached) >= 0.75 * TRIALS, f"too few faults fired where they were aimed: {fired}"

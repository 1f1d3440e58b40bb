"""SIGKILL between a revert's commit and the clean-up of the weight snapshots it made stale
(`worker_before_snapshots`): the log then holds snapshots of batches that are no longer live. The
next worker must not start from them (its weights are the replay from W₀, proven against the head
hash), deletes them at its start, and goes on: nothing lost, nothing applied twice, the api, a
fresh replay and `kedit verify` serve the head hash."""

from __future__ import annotations

import random
import signal

import httpx
import pytest
from sqlalchemy import text

from tests.utils import faults as sup

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def _snapshots(engine) -> dict[int, list[int]]:
    with engine.connect() as c:
        return {
            r.version: list(r.batch_ids) for r in c.execute(text("SELECT version, batch_ids FROM weight_snapshots"))
        }


def _live_batches(engine) -> set[int]:
    with engine.connect() as c:
        return {r.id for r in c.execute(text("SELECT id FROM batches WHERE removed_version IS NULL"))}


def test_kill_between_a_revert_commit_and_the_snapshot_cleanup(warm_cache, pg_url, redis_prefix, cluster_factory):
    env = sup.service_env(
        warm_cache, pg_url, sup.REDIS, redis_prefix, KEDIT_BATCH_SIZE="1", KEDIT_SNAPSHOT_EVERY="1", KEDIT_CANARIES="0"
    )
    cl = cluster_factory(env)
    api = cl.start_api(timeout=600)  # a bound for a loaded machine, not a timing
    engine = sup.sql_engine(pg_url)
    rng = random.Random(27)
    client = httpx.Client(base_url=api.url, timeout=60)
    accepted: set[int] = set()
    try:
        for i in range(3):  # B = 1: three versions, a snapshot of each
            r = client.post("/edits", json=sup.fact(rng, i))
            assert r.status_code == 202, r.text
            accepted.update(r.json()["ids"])
        w = cl.start("worker")
        sup.wait_for(lambda: sup.settled(engine), 240, "the first edits to settle")
        sup.wait_for(lambda: len(_snapshots(engine)) == 3, 60, "a snapshot of each version")
        cl.stop(w)
        victim = min(accepted)
        with engine.connect() as c:
            victim_batch = c.execute(text("SELECT batch_id FROM edits WHERE id = :i"), {"i": victim}).scalar()

        # The worker's first pass of the point is its start-up clean-up, the second follows the revert.
        assert client.post(f"/edits/{victim}/revert").status_code == 202
        w = cl.start("worker", fault="worker_before_snapshots:kill@2")
        sup.wait_for(lambda: not w.alive(), 240, "the armed worker to die")
        assert w.popen.wait(timeout=60) == -signal.SIGKILL, w.tail()
        state = sup.log_state(engine)
        assert state["edits"][victim]["status"] == "reverted", "the revert was not committed before the kill"
        sup.check_applied_at_most_once(state)
        stale = {v: b for v, b in _snapshots(engine).items() if victim_batch in b}
        assert stale, "the kill left no stale snapshot: the point is not between the commit and the clean-up"

        # A clean worker: replays from W₀ (every snapshot holds the reverted batch), proves the head
        # hash, then deletes the stale snapshots at its start.
        w = cl.start("worker", log_level="info")
        sup.wait_for(lambda: "writer lock acquired" in w.tail() or not w.alive(), 180, "the worker to start")
        sup.wait_for(lambda: not (set(_snapshots(engine)) & set(stale)), 120, "the stale snapshots to be deleted")
        assert "the snapshot of version" not in w.tail(), f"a start used a snapshot:\n{w.tail()}"
        live = _live_batches(engine)
        assert all(set(b) <= live for b in _snapshots(engine).values())

        r = client.post("/edits", json=sup.fact(rng, 99))  # and it goes on editing
        assert r.status_code == 202, r.text
        accepted.update(r.json()["ids"])
        sup.wait_for(lambda: sup.settled(engine), 240, "the last edit to settle")
        state = sup.log_state(engine)
        sup.check_settled(state, accepted, {victim})
        sup.check_applied_at_most_once(state)
        sup.check_head_served(api.url, state, warm_cache, pg_url, env)
    finally:
        client.close()
        engine.dispose()

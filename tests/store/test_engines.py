"""The queue on real Redis Streams and the store on real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from app.queue import QueueLost, RedisQueue
from app.store.db import WriterLock, current_revision, ensure_schema, head_revision, make_engine

pytestmark = pytest.mark.integration
REDIS = "redis://127.0.0.1:6379/0"
REPO = Path(__file__).resolve().parents[2]


def test_stream_consumer_group_take_ack(redis_prefix):
    q = RedisQueue(REDIS, prefix=redis_prefix, consumer="c1")
    assert q.ensure() is True and q.ensure() is False
    q.put("edit", [1, 2, 3])
    q.put("revert", [7])
    assert q.depth() == 4
    got = q.take(3, first_wait_s=0.01, batch_wait_s=0)
    assert [(m.kind, m.edit_id) for m in got] == [("edit", 1), ("edit", 2), ("edit", 3)]
    q.ack(got)
    assert q.depth() == 1  # acked entries leave the stream: XLEN is the queue depth
    rest = q.take(3, first_wait_s=0.01, batch_wait_s=0.01)
    assert [(m.kind, m.edit_id) for m in rest] == [("revert", 7)]
    q.ack(rest)
    assert q.take(3, first_wait_s=0.01, batch_wait_s=0) == [] and q.depth() == 0
    q.close()


def test_pending_entries_of_a_dead_consumer_are_reclaimed(redis_prefix):
    dead = RedisQueue(REDIS, prefix=redis_prefix, consumer="dead")
    dead.ensure()
    dead.put("edit", [10, 11])
    taken = dead.take(2, first_wait_s=0.01, batch_wait_s=0)
    assert [m.edit_id for m in taken] == [10, 11]  # ...and the consumer dies without XACK
    alive = RedisQueue(REDIS, prefix=redis_prefix, consumer="alive", reclaim_idle_ms=60_000)
    assert alive.take(2, first_wait_s=0.01, batch_wait_s=0) == []  # not stale yet: not taken
    reclaimed = alive.claim_stale(10, min_idle_ms=0)
    assert [m.edit_id for m in reclaimed] == [10, 11]
    alive.ack(reclaimed)
    assert alive.depth() == 0
    dead.close()
    alive.close()


def test_take_waits_for_the_batch_to_fill(redis_prefix):
    q = RedisQueue(REDIS, prefix=redis_prefix, consumer="c")
    q.ensure()
    q.put("edit", [1])
    late = threading.Timer(0.05, lambda: q.put("edit", [2]))
    late.start()
    got = q.take(2, first_wait_s=0.01, batch_wait_s=30)
    late.join()
    assert [m.edit_id for m in got] == [1, 2]
    q.close()


def test_lost_stream_is_reported_and_recreated(redis_prefix):
    q = RedisQueue(REDIS, prefix=redis_prefix, consumer="c")
    q.ensure()
    q.client.delete(q.stream)  # what a Redis restart without persistence looks like
    with pytest.raises(QueueLost):
        q.take(1, first_wait_s=0.01, batch_wait_s=0)
    assert q.ensure() is True  # caller refills from the database
    q.close()


def test_version_announcements(redis_prefix):
    q = RedisQueue(REDIS, prefix=redis_prefix)
    sub = q.subscribe_versions()
    sub.wait(0.05)  # let the subscription register
    q.publish_version(4)
    q.publish_version(5)
    assert sub.wait(5) == 5
    sub.close()
    q.close()


def test_migrations_on_postgres_even_when_two_processes_start_at_once(pg_url):
    # Two real processes (api and worker starting together): the advisory lock in
    # migrations/env.py makes the second wait and then find the schema at head.
    code = (
        "import sys; from app.store.db import ensure_schema, make_engine; ensure_schema(make_engine(sys.argv[1]), True)"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, pg_url], cwd=REPO, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    engine = make_engine(pg_url)
    assert current_revision(engine) == head_revision(engine)
    with engine.connect() as c:
        tables = set(c.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
    assert {
        "edits",
        "batches",
        "layer_deltas",
        "versions",
        "norm_snapshots",
        "model_info",
        "idempotency_keys",
        "alembic_version",
    } <= tables
    ensure_schema(engine, auto_migrate=False)  # at head: accepted without migrating
    engine.dispose()


def test_advisory_lock_one_writer_and_takeover(pg_url):
    a, b = make_engine(pg_url), make_engine(pg_url)
    la, lb = WriterLock(a, "m"), WriterLock(b, "m")
    assert la.try_acquire() and la.still_held()
    assert not lb.try_acquire()
    assert WriterLock(b, "another-model").try_acquire()  # one lock per model
    # The holder's connection dies (crash, network): Postgres frees the lock, the standby takes it.
    pid = la._conn.execute(text("SELECT pg_backend_pid()")).scalar()
    la._conn.commit()
    with b.connect() as c:
        c.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        c.commit()
    assert not la.still_held()
    assert lb.try_acquire() and lb.still_held()
    lb.release()
    la.release()
    a.dispose()
    b.dispose()

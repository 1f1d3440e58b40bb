"""The worker's crash-safety rules, driven step by step on the embedded engines (SQLite + in-process queue):
nothing accepted is lost, nothing is applied twice, a failed batch leaves the weights alone."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from app.queue import LocalQueue
from app.service import edits as edit_service
from app.service.context import ServiceContext
from app.service.errors import Conflict
from app.store import repo
from app.store.db import WriterLock, transaction
from app.store.models import Edit
from tests.utils.service import FACTS


@pytest.fixture
def rig(make_config):
    """A database, a queue and a worker that is driven by hand (no thread)."""
    cfg = make_config()
    ctx = ServiceContext.open(cfg, queue=LocalQueue())
    worker = ctx.build_worker()
    assert worker.lock.try_acquire()
    yield ctx, worker
    worker.lock.release()
    ctx.close()


def statuses(ctx, ids):
    with ctx.sessions() as s:
        return [e.status for e in repo.get_edits(s, ids)]


def head(ctx) -> int:
    with ctx.sessions() as s:
        return repo.head_version_id(s)


def test_batches_up_to_B_and_applies_each_edit_once(rig):
    ctx, worker = rig
    worker.config = worker.config.model_copy(update={"batch_size": 2})
    rows, _ = edit_service.submit(ctx.sessions, ctx.queue, FACTS[:3])
    ids = [e.id for e in rows]
    r1 = worker.step()
    assert r1.applied == ids[:2] and r1.version == 1
    r2 = worker.step()
    assert r2.applied == ids[2:] and r2.version == 2
    # The same messages again (a redelivery after a crash before XACK): skipped, no new version.
    ctx.queue.put("edit", ids)
    r3 = worker.step()
    assert r3.applied == [] and r3.skipped == ids[:2] and head(ctx) == 2
    assert worker.step().skipped == ids[2:]
    assert statuses(ctx, ids) == ["applied"] * 3 and ctx.queue.depth() == 0


def test_edits_left_applying_by_a_dead_worker_are_redone(rig):
    ctx, worker = rig
    rows, _ = edit_service.submit(ctx.sessions, LocalQueue(), FACTS[:2])  # a queue that is then lost
    ids = [e.id for e in rows]
    with transaction(ctx.sessions) as s:
        s.execute(update(Edit).where(Edit.id == ids[0]).values(status="applying"))
    worker.become_active()  # what a newly elected worker does
    assert statuses(ctx, ids) == ["queued", "queued"]
    assert ctx.queue.depth() == 2  # refilled from the database
    assert worker.step().applied == ids
    assert statuses(ctx, ids) == ["applied", "applied"]


def test_lost_queue_entries_are_refilled_when_idle(rig):
    ctx, worker = rig
    worker.become_active()
    # An api committed the rows and died before its XADD: the rows are the truth.
    rows, _ = edit_service.submit(ctx.sessions, LocalQueue(), FACTS[:1])
    assert ctx.queue.depth() == 0
    assert worker.step() is None  # idle round notices and refills
    assert ctx.queue.depth() == 1
    assert worker.step().applied == [rows[0].id]


def test_a_failing_batch_marks_failed_and_leaves_the_weights(rig):
    ctx, worker = rig
    before = worker.host.editor.weights_hash()
    # Rows the api would never accept (its validation mirrors the editor's), written directly.
    with transaction(ctx.sessions) as s:
        bad = repo.insert_edits(s, [{**FACTS[0], "prompt": "no subject slot here"}])
    ctx.queue.put("edit", [bad[0].id])
    report = worker.step()
    assert report.failed == [bad[0].id] and report.version is None
    with ctx.sessions() as s:
        e = repo.get_edit(s, bad[0].id)
    assert e.status == "failed" and "exactly once" in e.error
    assert worker.host.editor.weights_hash() == before and head(ctx) == 0


def test_one_bad_fact_does_not_sink_its_batch(rig):
    ctx, worker = rig
    with transaction(ctx.sessions) as s:
        rows = repo.insert_edits(s, [FACTS[0], {**FACTS[1], "target_new": "   "}, FACTS[2]])
    ids = [e.id for e in rows]
    ctx.queue.put("edit", ids)
    report = worker.step()
    assert sorted(report.applied) == [ids[0], ids[2]] and report.failed == [ids[1]]
    assert statuses(ctx, ids) == ["applied", "failed", "applied"]


def test_revert_requests_only_for_applied_edits(rig):
    ctx, worker = rig
    rows, _ = edit_service.submit(ctx.sessions, ctx.queue, FACTS[:1])
    with pytest.raises(Conflict, match="is queued, not applied"):
        edit_service.request_revert(ctx.sessions, ctx.queue, rows[0].id)
    worker.step()
    edit_service.request_revert(ctx.sessions, ctx.queue, rows[0].id)
    edit_service.request_revert(ctx.sessions, ctx.queue, rows[0].id)  # twice: one revert happens
    report = worker.step()
    assert report.applied == [rows[0].id] and report.skipped == [rows[0].id]
    assert statuses(ctx, [rows[0].id]) == ["reverted"] and head(ctx) == 2
    assert worker.host.editor.weights_hash() == worker.host.base_hash


def test_a_second_worker_stands_by(rig, make_config):
    ctx, worker = rig
    other = WriterLock(ctx.engine, worker.host.model_name)
    assert not other.try_acquire()
    worker.lock.release()
    assert other.try_acquire()
    other.release()


def test_rebuild_from_the_log_gives_the_same_weights(rig):
    ctx, worker = rig
    rows, _ = edit_service.submit(ctx.sessions, ctx.queue, FACTS[:2])
    worker.config = worker.config.model_copy(update={"batch_size": 1})
    worker.step()
    worker.step()
    live = worker.host.editor.weights_hash()
    assert live != worker.host.base_hash and len(worker.host.editor.batch_ids) == 2
    worker.host.replay()  # back to base, then base + live deltas in version order
    assert worker.host.editor.weights_hash() == live and worker.host.version == 2


def test_an_over_long_fact_fails_alone(rig):
    # What a probe sent: one fact whose prompt (inside the 512-character bound) is far longer than
    # the model's 256 positions, among three good ones.
    ctx, worker = rig
    long = {"prompt": "{} " + "\U0001f600" * 120, "subject": "Paris", "target_new": "Japan"}
    rows, _ = edit_service.submit(ctx.sessions, ctx.queue, [FACTS[0], FACTS[1], long, FACTS[2]])
    ids = [e.id for e in rows]
    report = worker.step()
    assert sorted(report.applied) == [ids[0], ids[1], ids[3]] and report.failed == [ids[2]]
    assert statuses(ctx, ids) == ["applied", "applied", "failed", "applied"]
    with ctx.sessions() as s:
        assert "the model reads at most 256 tokens" in repo.get_edit(s, ids[2]).error


def test_any_per_fact_failure_is_retried_fact_by_fact(rig, monkeypatch):
    # Not only the editor's refusals: an error from deep inside the model sinks only its own fact.
    ctx, worker = rig
    editor = worker.host.editor
    real_apply = editor.apply

    def apply(requests, batch_id):
        if any(r.subject == "Lionel Messi" for r in requests):
            raise IndexError("index out of range in self")
        return real_apply(requests, batch_id)

    monkeypatch.setattr(editor, "apply", apply)
    rows, _ = edit_service.submit(ctx.sessions, ctx.queue, FACTS)
    ids = [e.id for e in rows]
    report = worker.step()
    assert sorted(report.applied) == [ids[0], ids[1], ids[3]] and report.failed == [ids[2]]
    with ctx.sessions() as s:
        assert repo.get_edit(s, ids[2]).error == "IndexError: index out of range in self"
    worker.host.replay()  # the weights the worker holds are exactly base + the three applied facts
    assert len(worker.host.editor.batch_ids) == 3

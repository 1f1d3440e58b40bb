"""The quality guard on a tiny model: a planted canary that one edit of a batch breaks.

The canary is the unedited model's own top-1 answer to a prompt that exactly one fact of the batch
changes when written alone, and the other three written together do not (found by trying, on the
worker's weights, which are then put back). `reject` fails exactly that edit with a reason naming
the canary and commits its batch-mates; `warn` applies all and marks them; `off` does neither.
Kills in the middle of a guarded batch: tests/faults/test_guard_kills.py."""

from __future__ import annotations

import threading

import pytest

from app.editing.types import EditRequest
from app.queue import LocalQueue
from app.service import edits as edit_service
from app.service.context import ServiceContext
from app.store import repo
from tests.utils.guard import answers, plant
from tests.utils.service import FACTS, TINY_OVERRIDES, TINY_PROMPTS, wait_for

# Prompts the tiny model may know; the canary is whichever one edit of the batch alone breaks.
CANDIDATES = [
    *TINY_PROMPTS,
    "Toyota is a company from",
    "Rome is in",
    "The Beatles played music in",
    "Danielle Darrieux was born in",
]
BATCH = [FACTS[1], FACTS[2], dict(FACTS[0], target_new="German"), FACTS[3]]
# Only canary facts count in these tests: perplexity and entropy of a random tiny model move a lot.
LOOSE = dict(guard_ppl_rise=100.0, guard_ppl_rise_total=100.0, guard_entropy_drop=1.0, guard_entropy_drop_total=1.0)
# Edits strong enough to move the tiny model's top-1 answers (the default test settings barely do).
STRONG = dict(TINY_OVERRIDES, max_steps=25, clamp_norm_factor=4.0)

_CONSTRUCTED: dict[str, tuple[str, int]] = {}  # the same tiny model and batch in every test


def construct(worker) -> tuple[str, int]:
    if "found" not in _CONSTRUCTED:
        _CONSTRUCTED["found"] = _construct(worker)
    return _CONSTRUCTED["found"]


def _construct(worker) -> tuple[str, int]:
    """A canary prompt and the one fact of BATCH that breaks it: that fact written alone changes the
    prompt's top-1 answer, the other three written together do not. Found by trying, on the
    worker's weights, which are then put back exactly."""
    editor = worker.host.editor
    before = answers(worker, CANDIDATES)
    point = editor.save_point()
    flips = []
    for i, fact in enumerate(BATCH):
        editor.apply([EditRequest(**fact)], -100 - i)
        flips.append({p for p, a, b in zip(CANDIDATES, answers(worker, CANDIDATES), before, strict=True) if a != b})
        editor.restore(point)
    for i in range(len(BATCH)):
        for p in sorted(flips[i] - set().union(*(flips[j] for j in range(len(BATCH)) if j != i))):
            editor.apply([EditRequest(**f) for j, f in enumerate(BATCH) if j != i], -200)
            others_keep = answers(worker, [p])[0] == before[CANDIDATES.index(p)]
            editor.restore(point)
            if others_keep:
                return p, i
    raise AssertionError(f"no candidate prompt is broken by exactly one fact of the batch: {flips}")


@pytest.fixture
def guarded(make_config):
    made = []

    def make(policy: str):
        cfg = make_config(guard=policy, edit_overrides=STRONG, canary_dtype="bfloat16", **LOOSE)  # the bf16 copy
        ctx = ServiceContext.open(cfg, queue=LocalQueue())
        worker = ctx.build_worker()
        assert worker.lock.try_acquire()
        made.append((ctx, worker))
        canary, breaker = construct(worker)
        expected = plant(ctx, worker, canary)
        worker.become_active()
        assert worker.guard.active, worker.last_error
        return ctx, worker, canary, expected, breaker

    yield make
    for ctx, worker in made:
        worker.lock.release()
        ctx.close()


def submit(ctx) -> list[int]:
    rows, _ = edit_service.submit(ctx.sessions, ctx.queue, BATCH)
    return [e.id for e in rows]


def edits(ctx, ids):
    with ctx.sessions() as s:
        return {e.id: e for e in repo.get_edits(s, ids)}


def quality(ctx, version):
    with ctx.sessions() as s:
        return repo.quality_at(s, version)


def test_reject_fails_exactly_the_edit_that_breaks_a_canary(guarded):
    ctx, worker, canary, expected, k = guarded("reject")
    ids = submit(ctx)
    report = worker.step()
    got = edits(ctx, ids)
    breaker = ids[k]
    assert report.failed == [breaker]
    assert got[breaker].status == "failed"
    assert f"would change '{canary}' from {expected} to" in got[breaker].error
    assert got[breaker].guard == got[breaker].error
    assert [got[i].status for i in ids if i != breaker] == ["applied"] * 3
    q = quality(ctx, report.version)
    assert q.guard["verdict"] == "reject" and q.guard["rejected"] == [breaker]
    assert q.facts_kept == q.facts_total == 1  # what was committed keeps the canary
    tok = worker.host.editor.lm.tokenizer
    assert tok.decode([answers(worker, [canary])[0]]).strip() == expected
    # What the worker committed is what any process rebuilds from the log.
    replica = ctx.host_replica(use_snapshots=False)
    assert replica.weights_hash == worker.host.weights_hash


def test_warn_applies_the_batch_and_marks_what_it_broke(guarded):
    ctx, worker, canary, expected, _ = guarded("warn")
    ids = submit(ctx)
    report = worker.step()
    got = edits(ctx, ids)
    assert report.applied == ids and report.failed == []
    assert all(got[i].status == "applied" for i in ids)
    assert all(got[i].guard.startswith(f"warned: this batch would change '{canary}' from {expected} to") for i in ids)
    q = quality(ctx, report.version)
    assert q.guard["verdict"] == "warn" and q.facts_kept == 0
    assert q.lost[0]["prompt"] == canary and q.lost[0]["expected"] == expected


def test_off_applies_and_marks_nothing_but_still_scores(guarded):
    ctx, worker, _, _, _ = guarded("off")
    ids = submit(ctx)
    report = worker.step()
    got = edits(ctx, ids)
    assert report.applied == ids
    assert all(got[i].status == "applied" and got[i].guard is None for i in ids)
    q = quality(ctx, report.version)
    assert q.guard["verdict"] == "ignored" and q.facts_kept == 0


def test_a_revert_is_scored_and_gives_the_canary_back(guarded):
    ctx, worker, _, _, k = guarded("warn")
    ids = submit(ctx)
    worker.step()
    edit_service.request_revert(ctx.sessions, ctx.queue, ids[k])
    report = worker.step()
    q = quality(ctx, report.version)
    assert q.guard["verdict"] == "revert" and q.live_edits == 3
    with ctx.sessions() as s:
        assert [p.version for p in repo.quality_history(s, 10)] == [0, 1, 2]


def test_reject_of_a_batch_of_one_commits_nothing(guarded):
    ctx, worker, canary, expected, k = guarded("reject")
    rows, _ = edit_service.submit(ctx.sessions, ctx.queue, [BATCH[k]])
    report = worker.step()
    assert report.failed == [rows[0].id] and report.version is None
    e = edits(ctx, [rows[0].id])[rows[0].id]
    assert e.status == "failed" and e.error.startswith(
        f"refused by the quality guard: would change '{canary}' from {expected}"
    )
    with ctx.sessions() as s:
        assert repo.head_version_id(s) == 0
    assert worker.host.editor.weights_hash() == worker.host.base_hash


def test_a_stop_while_the_canaries_are_chosen_ends_the_worker_and_records_nothing(make_config):
    """Choosing and scoring the canaries is the worker's longest first step (about 20 s on SmolLM2);
    a stop asked for in the middle ends it at the next forward pass, with nothing half recorded,
    and the next start does the whole of it."""
    ctx = ServiceContext.open(make_config(), queue=LocalQueue())
    worker = ctx.build_worker()
    choosing = threading.Event()
    hook = worker.guard.model.base_model.register_forward_pre_hook(lambda *_: choosing.set())
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    try:
        thread.start()
        assert choosing.wait(60), "the worker never began choosing its canaries"
        stop.set()
        thread.join(60)
        assert not thread.is_alive()
        with ctx.sessions() as s:
            assert repo.canaries(s) == [] and repo.quality_at(s, 0) is None
        hook.remove()

        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        wait_for(lambda: worker.active, 120, "the worker to choose and score its canaries")
        assert worker.guard.active, worker.last_error
        with ctx.sessions() as s:
            assert repo.canaries(s) and repo.quality_at(s, 0) is not None
    finally:
        stop.set()
        thread.join(60)
        ctx.close()

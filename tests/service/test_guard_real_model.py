"""The quality guard on the real SmolLM2 with real CounterFact edits: one edit of a batch changes the
model's answer to a canary; `reject` refuses exactly that edit, naming the prompt, and commits the others.

The canary is one of the breaking record's own prompts, found by trying on the worker's weights (put
back exactly afterwards): a neighbourhood prompt (another subject, the same relation: the edit bled
into a fact it should have left alone) where the edit changes one, else a paraphrase of the fact (a
canary that the edit contradicts). SmolLM2's ENCORE edits are local, so which neighbourhood prompt
flips, if any, is a matter of the last bits of the arithmetic and differs from one CPU to another;
a paraphrase flips whenever the edit takes. The breaker must change the canary alone and in the
batch, its batch-mate alone must not, so the guard has to find the breaker."""

from __future__ import annotations

import json

import pytest

from app.config import ServiceConfig
from app.editing.types import EditRequest
from app.queue import LocalQueue
from app.service import edits as edit_service
from app.service.context import ServiceContext
from app.store import repo
from tests.utils.guard import answers, plant

pytestmark = [pytest.mark.slow]

TRIED = 3  # CounterFact records tried as the breaking edit
MATE = 500  # index of the batch-mate (far from the tried records)
LOOSE = dict(guard_ppl_rise=100.0, guard_ppl_rise_total=100.0, guard_entropy_drop=1.0, guard_entropy_drop_total=1.0)


def fact(rec: dict) -> dict:
    rw = rec["requested_rewrite"]
    return {
        "prompt": rw["prompt"],
        "subject": rw["subject"],
        "target_new": rw["target_new"]["str"],
        "target_true": rw["target_true"]["str"],
    }


def construct(worker, records: list[dict]) -> tuple[dict, str]:
    """(breaking fact, canary prompt): the breaker alone and the batch [mate, breaker] change the
    canary's answer, the mate alone does not; so the guard must find the breaker."""
    editor = worker.host.editor
    mate = EditRequest(**fact(records[MATE]))
    point = editor.save_point()

    def changed(requests: list[EditRequest], prompts: list[str], before: list[int]) -> set[str]:
        editor.apply(requests, -1)
        out = {p for p, a, b in zip(prompts, answers(worker, prompts), before, strict=True) if a != b}
        editor.restore(point)
        return out

    for rec in records[:TRIED]:
        prompts = list(rec["neighborhood_prompts"]) + list(rec["paraphrase_prompts"])
        before = answers(worker, prompts)
        breaker = EditRequest(**fact(rec))
        found = changed([breaker], prompts, before)
        if found:
            found &= changed([mate, breaker], prompts, before)
        if found:
            found -= changed([mate], prompts, before)
        if found:
            return fact(rec), next(p for p in prompts if p in found)  # a neighbourhood prompt first
    pytest.fail(f"none of the first {TRIED} CounterFact edits changes one of its own prompts as needed")


def test_reject_refuses_the_counterfact_edit_that_breaks_its_neighbour(shared_data, tmp_path):
    records = json.loads((shared_data / "counterfact" / "counterfact.json").read_text())
    # The guard's search is under test, not how facts are written: without the preset's re-edit
    # passes and chat contexts each of the construction's trial edits takes a third of the time.
    cfg = ServiceConfig(
        database_url=f"sqlite:///{tmp_path / 'kedit.db'}",
        stats_corpus=shared_data / "corpus",
        guard="reject",
        edit_overrides={"reedit_passes": 0, "chat_contexts": 0},
        **LOOSE,
    )
    ctx = ServiceContext.open(cfg, queue=LocalQueue())
    worker = ctx.build_worker()
    assert worker.lock.try_acquire()
    try:
        breaker, canary = construct(worker, records)
        expected = plant(ctx, worker, canary, text=canary)
        worker.become_active()
        assert worker.guard.active, worker.last_error
        rows, _ = edit_service.submit(ctx.sessions, ctx.queue, [fact(records[MATE]), breaker])
        ids = [e.id for e in rows]
        report = worker.step()
        assert report.failed == [ids[1]], report
        with ctx.sessions() as s:
            got = {e.id: e for e in repo.get_edits(s, ids)}
            q = repo.quality_at(s, report.version)
        assert got[ids[1]].status == "failed"
        assert got[ids[1]].error.startswith(f"refused by the quality guard: would change '{canary}' from {expected} to")
        assert got[ids[0]].status == "applied"
        assert q.guard["rejected"] == [ids[1]] and q.facts_kept == 1
        print(
            f"\nrefused: {breaker['prompt'].format(breaker['subject'])} -> {breaker['target_new']}: {got[ids[1]].error}"
        )
    finally:
        worker.lock.release()
        ctx.close()

"""The worker's two jobs on the log: apply a batch of queued edits, revert one applied edit.

Each job ends in ONE database transaction (the commit point). Before it the editor has changed
only this process's weights; if the job fails, or the commit does, the host rebuilds its
weights from the log, so the weights never get ahead of what is recorded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from app.editing.types import BatchResult, EditError, EditRequest, LayerNorms
from app.service import faults
from app.service.guard import Guard, Guarded
from app.service.host import ModelHost
from app.store import repo
from app.store.codec import tensor_from_bytes
from app.store.db import transaction
from app.store.models import Edit

log = logging.getLogger(__name__)


class LostWriterLock(RuntimeError):
    """Another worker may be editing now: this one must not commit."""


@dataclass
class JobReport:
    version: int | None = None  # the version committed, if any
    applied: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0
    mpes_steps: list[int] = field(default_factory=list)
    # Applied edits whose answers the worker asks once the version is published (shown.py).
    to_check: list[int] = field(default_factory=list)


def _request(e: Edit) -> EditRequest:
    return EditRequest(prompt=e.prompt, subject=e.subject, target_new=e.target_new, target_true=e.target_true)


def _z_star(e: Edit) -> bytes:
    if e.z_star is None:  # recorded with every applied edit
        raise EditError(f"edit {e.id} is applied but its z* is not in the log")
    return e.z_star


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EditError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def apply_edits(host: ModelHost, edit_ids: list[int], lock_ok=lambda: True, guard: Guard | None = None) -> JobReport:
    """Run the editor on the still-queued edits among `edit_ids` and commit them as one version
    (with `guard`: scored on the canaries first, and judged by its policy)."""
    report = JobReport()
    edits = _claim(host, edit_ids, report)
    if not edits:
        return report
    faults.point("worker_claimed")
    host.sync()
    with host.sessions() as session:
        batch_id = repo.next_batch_id(session)
        version = repo.head_version_id(session) + 1
    active = guard if guard is not None and guard.active else None  # the guard, when it scores this batch
    try:
        edited = _edit_and_guard(host, edits, batch_id, version, active)
    except Exception as exc:
        return _after_failure(host, edits, exc, lock_ok, guard, report)
    return _record(host, edits, edited, batch_id, version, active, lock_ok, report)


def _claim(host: ModelHost, edit_ids: list[int], report: JobReport) -> list[Edit]:
    """queued -> applying; redeliveries (and edits another worker finished) drop out here."""
    with transaction(host.sessions) as session:
        edits = repo.claim_for_batch(session, edit_ids)
        report.skipped = sorted(set(edit_ids) - {e.id for e in edits})
    return edits


@dataclass
class _Edited:
    """What the editor and the guard made of a batch in memory, before anything is recorded."""

    result: BatchResult | None  # None: the guard refused every edit
    guarded: Guarded | None  # None: no guard scored the batch
    seconds: float
    weights_hash: str = ""
    norms: list[LayerNorms] = field(default_factory=list)


def _edit_and_guard(host: ModelHost, edits: list[Edit], batch_id: int, version: int, active: Guard | None) -> _Edited:
    requests = [_request(e) for e in edits]
    t0 = time.perf_counter()
    with host.writing():
        point = host.editor.save_point() if active is not None and active.policy == "reject" else None
        applied = host.editor.apply(requests, batch_id)
        edited = _Edited(applied, None, 0.0)
        if active is not None:
            previous = active.previous(version)
            scores = active.score()
            judgement = active.judge(scores, previous)
            faults.point("worker_guard_scored")
            if judgement and point is not None:  # a save point is taken when the policy is reject
                edited.guarded = active.bisect(point, requests, applied, batch_id, previous, judgement)
            else:
                edited.guarded = Guarded(applied, scores, judgement)
            edited.result = edited.guarded.result
        if edited.result is not None:
            edited.weights_hash = host.editor.weights_hash()
            edited.norms = host.editor.norms()
    edited.seconds = time.perf_counter() - t0
    return edited


def _after_failure(
    host: ModelHost, edits: list[Edit], exc: Exception, lock_ok, guard: Guard | None, report: JobReport
) -> JobReport:
    reason = _reason(exc)
    log.warning("batch of edits %s failed: %s", [e.id for e in edits], reason)
    host.sync_or_rebuild()
    if len(edits) > 1:
        # One unusable fact should not sink the others, whatever it breaks (a refusal, or an
        # error deep in the model): retry each alone, so only the fact that fails alone fails.
        with transaction(host.sessions) as session:
            repo.requeue(session, [e.id for e in edits])
        for e in edits:
            sub = apply_edits(host, [e.id], lock_ok, guard)
            report.applied += sub.applied
            report.failed += sub.failed
            report.mpes_steps += sub.mpes_steps
            report.to_check += sub.to_check
            report.version = sub.version or report.version
        return report
    with transaction(host.sessions) as session:
        repo.mark_failed(session, [e.id for e in edits], reason)
    report.failed = [e.id for e in edits]
    return report


def _record(
    host: ModelHost,
    edits: list[Edit],
    edited: _Edited,
    batch_id: int,
    version: int,
    active: Guard | None,
    lock_ok,
    report: JobReport,
) -> JobReport:
    """Commit the batch as one version: its applied edits, the refused ones, the guard's scores."""
    result, guarded = edited.result, edited.guarded
    refused = {edits[i].id: reason for i, reason in (guarded.rejected if guarded else {}).items()}
    if result is None:  # the guard refused every edit: no new version
        with transaction(host.sessions) as session:
            repo.mark_refused(session, refused)
        report.failed = sorted(refused)
        return report
    kept = [edits[i].id for i in result.extra.get("order", range(len(edits)))]
    decision = _decision(active, guarded, refused) if active is not None and guarded is not None else None

    def record(session) -> None:
        fresh = repo.get_edits(session, kept)
        repo.record_batch(
            session, repo.Applied(version, edited.weights_hash, edited.norms), result, fresh, edited.seconds
        )
        repo.mark_refused(session, refused)
        if decision and decision["verdict"] == "warn":
            for e in fresh:
                e.guard = "warned: this batch " + "; ".join(decision["crossed"])
        if active is not None:
            assert guarded is not None and guarded.scores is not None  # a guarded batch with a result has scores
            session.flush()
            repo.put_quality(session, active.row(session, version, guarded.scores, decision))

    _commit(host, lock_ok, record, version, edited.weights_hash, f"batch {batch_id}")
    report.to_check = list(kept)
    report.version = version
    report.applied = kept
    report.failed = sorted(refused)
    report.mpes_steps = [int(o.mpes_steps) for o in result.outcomes]
    report.seconds = edited.seconds
    return report


def _decision(guard: Guard, guarded: Guarded, refused: dict[int, str]) -> dict:
    """What the guard decided about a batch, as the log records it."""
    crossed = guarded.judgement.crossed
    if refused:
        verdict = "reject"
    elif not crossed:
        verdict = "ok"
    else:
        verdict = {"off": "ignored", "warn": "warn", "reject": "reject"}[guard.policy]
    return {
        "policy": guard.policy,
        "verdict": verdict,
        "crossed": crossed,
        "rejected": sorted(refused),
        "reasons": {str(k): v for k, v in refused.items()},
    }


def revert_edit(host: ModelHost, edit_id: int, lock_ok=lambda: True, guard: Guard | None = None) -> JobReport:
    """docs/method.md §4: take the edit's batch out, put its other live edits back from their stored z*."""
    report = JobReport()
    host.sync()
    with host.sessions() as session:
        edit = repo.get_edit(session, edit_id)
        if edit is None or edit.status != "applied" or not edit.revert_requested or edit.batch_id is None:
            report.skipped = [edit_id]
            return report
        old_batch = edit.batch_id
        survivors = [e for e in repo.live_edits_of_batch(session, old_batch) if e.id != edit_id]
        requests = [_request(e) for e in survivors]
        z_stars = [tensor_from_bytes(_z_star(e)) for e in survivors]
        new_batch = repo.next_batch_id(session)
        version = repo.head_version_id(session) + 1
    t0 = time.perf_counter()
    try:
        with host.writing():
            host.remove_batch(old_batch)  # from the newest usable snapshot before it, or W₀
            result = host.editor.reapply(requests, z_stars, new_batch) if survivors else None
            weights_hash = host.editor.weights_hash()
            norms = host.editor.norms()
            scores = guard.score() if guard is not None and guard.active else None
        faults.point("worker_revert_before_commit")
    except Exception as exc:
        reason = f"revert failed: {_reason(exc)}"
        log.warning("revert of edit %d failed: %s", edit_id, reason)
        host.sync_or_rebuild()
        with transaction(host.sessions) as session:
            repo.clear_revert_request(session, edit_id, reason)
        report.failed = [edit_id]
        return report
    seconds = time.perf_counter() - t0

    def record(session) -> None:
        e = repo.get_edit(session, edit_id)
        assert e is not None  # read above; edits are never deleted
        fresh = repo.get_edits(session, [x.id for x in survivors])
        repo.record_revert(session, repo.Applied(version, weights_hash, norms), e, old_batch, fresh, result, seconds)
        if scores is not None and guard is not None:  # a revert is never refused; its scores are recorded all the same
            session.flush()
            repo.put_quality(
                session,
                guard.row(
                    session,
                    version,
                    scores,
                    {"policy": guard.policy, "verdict": "revert", "crossed": [], "rejected": []},
                ),
            )

    _commit(host, lock_ok, record, version, weights_hash, f"the revert of edit {edit_id}")
    report.to_check = [e.id for e in survivors]
    report.version = version
    report.applied = [edit_id]
    report.seconds = seconds
    return report


def _commit(host: ModelHost, lock_ok, record, version: int, weights_hash: str, what: str) -> None:
    """The point of no return: write one version in ONE transaction while holding the writer
    lock. On any failure the in-memory weights go back to the log before the error propagates."""
    try:
        if not lock_ok():
            raise LostWriterLock("the writer lock was lost before commit")
        with transaction(host.sessions) as session:
            record(session)
    except Exception:
        log.exception("could not record %s; undoing it in memory", what)
        host.sync_or_rebuild()
        raise
    faults.point("worker_after_commit")
    host.advance(version, weights_hash)

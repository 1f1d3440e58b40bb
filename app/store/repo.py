"""Repository functions over the edit log. Callers own the transaction (see db.transaction)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, cast

import torch
from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.orm import Session, defer

from app.editing.types import BatchResult, EditOutcome, LayerDelta, LayerNorms
from app.store.codec import delta_from_bytes, delta_to_bytes, tensor_to_bytes, weights_to_bytes
from app.store.models import (
    EDIT_STATUSES,
    GUARD_REFUSAL,
    Batch,
    Canary,
    Edit,
    IdempotencyKey,
    LayerDeltaRow,
    ModelInfo,
    NormSnapshot,
    QualityScore,
    Version,
    WeightSnapshot,
    utcnow,
)

# --- edits ---------------------------------------------------------------------------------

QUEUED, APPLYING, APPLIED, FAILED, REVERTED = EDIT_STATUSES  # the transitions below name them


class Unset(Enum):
    """No filter (None is a value some filters take: "not checked")."""

    UNSET = "unset"


UNSET = Unset.UNSET


def insert_edits(session: Session, facts: Iterable[dict]) -> list[Edit]:
    rows = [Edit(status=QUEUED, revert_requested=False, **fact) for fact in facts]
    session.add_all(rows)
    session.flush()  # assigns ids
    return rows


def get_edit(session: Session, edit_id: int) -> Edit | None:
    return session.get(Edit, edit_id)


def get_edits(session: Session, ids: Sequence[int]) -> list[Edit]:
    if not ids:
        return []
    rows = session.scalars(select(Edit).where(Edit.id.in_(list(ids)))).all()
    by_id = {e.id: e for e in rows}
    return [by_id[i] for i in ids if i in by_id]


def list_edits(
    session: Session,
    status: str | None,
    limit: int,
    offset: int,
    subject: str | None = None,
    shown: bool | None | Unset = UNSET,
) -> tuple[list[Edit], int]:
    """A page of edits by id; `subject`: only those whose subject contains it (case-insensitive);
    `shown`: only those whose prompt's answer showed target_new (True), did not (False), or was not
    checked (None)."""
    q = select(Edit)
    c = select(func.count()).select_from(Edit)
    if status:
        q = q.where(Edit.status == status)
        c = c.where(Edit.status == status)
    if shown is not UNSET:
        cond = Edit.shown.is_(None) if shown is None else Edit.shown.is_(bool(shown))
        q = q.where(cond)
        c = c.where(cond)
    if subject:
        # LIKE's own wildcards in the search are matched literally.
        pattern = "%" + subject.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        q = q.where(func.lower(Edit.subject).like(pattern, escape="\\"))
        c = c.where(func.lower(Edit.subject).like(pattern, escape="\\"))
    rows = session.scalars(q.order_by(Edit.id).limit(limit).offset(offset)).all()
    return list(rows), int(session.scalar(c) or 0)


def status_counts(session: Session) -> dict[str, int]:
    return {st: int(n) for st, n in session.execute(select(Edit.status, func.count()).group_by(Edit.status))}


def queued_ids(session: Session) -> list[int]:
    return list(session.scalars(select(Edit.id).where(Edit.status == "queued").order_by(Edit.id)))


def pending_revert_ids(session: Session) -> list[int]:
    return list(
        session.scalars(
            select(Edit.id).where(Edit.status == "applied", Edit.revert_requested.is_(True)).order_by(Edit.id)
        )
    )


def request_revert(session: Session, edit_id: int) -> Edit | None:
    e = session.get(Edit, edit_id, with_for_update=True)
    if e is not None and e.status == "applied":
        e.revert_requested = True
    return e


def clear_revert_request(session: Session, edit_id: int, reason: str) -> None:
    e = session.get(Edit, edit_id)
    if e is not None:
        e.revert_requested = False
        e.error = reason[:2000]


@dataclass
class Check:
    """What the model answered an applied edit's prompt (and question) at one version."""

    edit_id: int
    shown: bool
    answer: str
    question_shown: bool | None = None
    question_answer: str | None = None
    question_problem: str | None = None


def record_checks(session: Session, version: int, checks: Sequence[Check], at: datetime | None = None) -> int:
    """Write the checks made at `version`, except on edits already checked at a newer one (a late
    writer never overwrites a newer truth). Returns how many rows were written."""
    at = at or utcnow()
    n = 0
    for c in checks:
        res = cast(
            CursorResult[Any],
            session.execute(
                update(Edit)
                .where(Edit.id == c.edit_id, (Edit.checked_version.is_(None)) | (Edit.checked_version <= version))
                .values(
                    shown=c.shown,
                    answer=c.answer,
                    question_shown=c.question_shown,
                    question_answer=c.question_answer,
                    question_problem=c.question_problem,
                    checked_version=version,
                    checked_at=at,
                )
            ),
        )
        n += int(res.rowcount or 0)
    return n


def shown_counts(session: Session) -> dict[tuple[str, bool | None], int]:
    """Applied edits by (kind, shown): kind "prompt" over all of them, "question" over those with a question."""
    out: dict[tuple[str, bool | None], int] = {}
    applied = Edit.status == "applied"
    for v, n in session.execute(select(Edit.shown, func.count()).where(applied).group_by(Edit.shown)):
        out[("prompt", v)] = int(n)
    asked = select(Edit.question_shown, func.count()).where(applied, Edit.question.is_not(None))
    for v, n in session.execute(asked.group_by(Edit.question_shown)):
        out[("question", v)] = int(n)
    return out


# --- an edit's status ------------------------------------------------------------------------
#
# Every change of an edit's status is one of these transitions, made by the function of its name
# and nowhere else (app/service calls them; it sets no status itself):
#
#   insert_edits       (new)    -> queued
#   claim_for_batch    queued   -> applying   (a redelivered or finished edit is skipped)
#   requeue            applying -> queued     (a failed batch retries its edits one by one)
#   requeue_applying   applying -> queued     (what a dead worker left half-done)
#   mark_applied       applying -> applied    (in the batch's commit, record_batch)
#   mark_failed        applying -> failed     (the editor could not apply it)
#   mark_refused       applying -> failed     (the quality guard refused it)
#   mark_reverted      applied  -> reverted   (in the revert's commit, record_revert)


def claim_for_batch(session: Session, ids: Sequence[int]) -> list[Edit]:
    """Queued edits among `ids` become `applying`; anything else (applied, failed, a redelivery) is skipped."""
    rows = session.scalars(select(Edit).where(Edit.id.in_(list(ids)), Edit.status == QUEUED).order_by(Edit.id)).all()
    for e in rows:
        e.status = APPLYING
    return list(rows)


def requeue(session: Session, ids: Sequence[int]) -> None:
    """The edits among `ids` go back to the queue (to be claimed again, one at a time)."""
    for e in get_edits(session, ids):
        e.status = QUEUED


def requeue_applying(session: Session) -> int:
    """Edits a dead worker left half-done go back to the queue (only the lock holder calls this)."""
    # An UPDATE's result is a CursorResult; Session.execute is typed with the general Result.
    res = cast(
        CursorResult[Any],
        session.execute(update(Edit).where(Edit.status == APPLYING).values(status=QUEUED, updated_at=utcnow())),
    )
    return int(res.rowcount or 0)


def mark_applied(e: Edit, batch_id: int, version: int, outcome: EditOutcome, seconds: float) -> None:
    e.status = APPLIED
    e.error = None
    e.batch_id = batch_id
    e.applied_version = version
    e.z_star = tensor_to_bytes(outcome.z_star)
    e.mpes_steps = int(outcome.mpes_steps)
    e.prob_before = float(outcome.prob_before)
    e.prob_after = float(outcome.prob_after)
    e.seconds = seconds


def mark_failed(session: Session, ids: Sequence[int], reason: str) -> None:
    session.execute(
        update(Edit).where(Edit.id.in_(list(ids))).values(status=FAILED, error=reason[:2000], updated_at=utcnow())
    )


def mark_refused(session: Session, refused: dict[int, str]) -> None:
    """Edits the guard refused (id -> what they would have broken) end `failed`, saying so."""
    for e in get_edits(session, list(refused)):
        e.status = FAILED
        e.error = e.guard = GUARD_REFUSAL + refused[e.id]


def mark_reverted(e: Edit, version: int) -> None:
    e.status = REVERTED
    e.revert_requested = False
    e.reverted_version = version


# --- idempotency ---------------------------------------------------------------------------


def get_idempotency(session: Session, key: str, not_before: datetime | None = None) -> IdempotencyKey | None:
    """The key's record, unless it was made before `not_before` (expired: as if never used)."""
    row = session.get(IdempotencyKey, key)
    if row is None or not_before is None:
        return row
    made = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return row if made >= not_before else None


def put_idempotency(session: Session, key: str, body_hash: str, edit_ids: list[int]) -> None:
    session.add(IdempotencyKey(key=key, body_hash=body_hash, edit_ids=edit_ids))
    session.flush()


def purge_idempotency(session: Session, before: datetime) -> int:
    """Delete the keys made before `before`; returns how many."""
    res = cast(CursorResult[Any], session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < before)))
    return res.rowcount or 0


def count_idempotency(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(IdempotencyKey)) or 0


# --- model info ----------------------------------------------------------------------------


def get_model_info(session: Session) -> ModelInfo | None:
    return session.get(ModelInfo, 1)


def put_model_info(
    session: Session, name: str, base_hash: str, layers: list[int], settings: dict, templates: list[str] | None = None
) -> ModelInfo:
    info = ModelInfo(id=1, name=name, base_hash=base_hash, layers=layers, settings=settings, templates=templates)
    session.add(info)
    session.flush()
    return info


# --- versions and batches ------------------------------------------------------------------


def head_version(session: Session) -> Version | None:
    return session.scalars(select(Version).order_by(Version.id.desc()).limit(1)).first()


def head_version_id(session: Session) -> int:
    return int(session.scalar(select(func.max(Version.id))) or 0)


def get_version(session: Session, version: int) -> Version | None:
    return session.get(Version, version)


def versions_after(session: Session, version: int) -> list[Version]:
    return list(session.scalars(select(Version).where(Version.id > version).order_by(Version.id)))


def next_batch_id(session: Session) -> int:
    return int(session.scalar(select(func.max(Batch.id))) or 0) + 1


def live_batches(session: Session, at_version: int | None = None) -> list[Batch]:
    """Batches live at `at_version` (default: head), in the order of the versions that created them."""
    q = select(Batch)
    if at_version is None:
        q = q.where(Batch.removed_version.is_(None))
    else:
        q = q.where(
            Batch.created_version <= at_version,
            (Batch.removed_version.is_(None)) | (Batch.removed_version > at_version),
        )
    return list(session.scalars(q.order_by(Batch.created_version, Batch.id)))


def batch_deltas(session: Session, batch_id: int) -> list[LayerDelta]:
    rows = session.scalars(
        select(LayerDeltaRow).where(LayerDeltaRow.batch_id == batch_id).order_by(LayerDeltaRow.layer)
    )
    return [delta_from_bytes(r.layer, r.data) for r in rows]


def batches_deltas(
    session: Session, batch_ids: Sequence[int], chunk: int = 64
) -> Iterator[tuple[int, list[LayerDelta]]]:
    """(batch id, its deltas) for each of `batch_ids`, in that order, `chunk` batches per query (a
    replay of a long log would otherwise make one round trip per batch)."""
    ids = list(batch_ids)
    for i in range(0, len(ids), chunk):
        part = ids[i : i + chunk]
        rows = session.execute(
            select(LayerDeltaRow.batch_id, LayerDeltaRow.layer, LayerDeltaRow.data)
            .where(LayerDeltaRow.batch_id.in_(part))
            .order_by(LayerDeltaRow.batch_id, LayerDeltaRow.layer)
        ).all()
        by_batch: dict[int, list[LayerDelta]] = {b: [] for b in part}
        for batch_id, layer, data in rows:
            by_batch[batch_id].append(delta_from_bytes(layer, data))
        yield from by_batch.items()


def live_edits_of_batch(session: Session, batch_id: int) -> list[Edit]:
    return list(
        session.scalars(select(Edit).where(Edit.batch_id == batch_id, Edit.status == "applied").order_by(Edit.id))
    )


@dataclass
class Applied:
    """What the worker hands the store after the editor ran, for one commit."""

    version: int
    weights_hash: str
    norms: list[LayerNorms]


def _add_version(session: Session, applied: Applied, **fields) -> None:
    session.add(Version(id=applied.version, weights_hash=applied.weights_hash, **fields))
    session.flush()  # the batch rows below reference it
    for n in applied.norms:
        session.add(
            NormSnapshot(
                version=applied.version,
                layer=n.layer,
                weight_norm=n.weight_norm,
                base_norm=n.base_norm,
                delta_norm=n.delta_norm,
            )
        )


def _add_batch(
    session: Session,
    applied: Applied,
    result: BatchResult,
    kind: str,
    seconds: float,
    source_batch_id: int | None = None,
) -> None:
    session.add(
        Batch(
            id=result.batch_id,
            created_version=applied.version,
            kind=kind,
            source_batch_id=source_batch_id,
            size=len(result.outcomes),
            z_seconds=result.z_seconds,
            solve_seconds=result.solve_seconds,
            seconds=seconds,
        )
    )
    session.flush()
    for d in result.deltas:
        session.add(LayerDeltaRow(batch_id=result.batch_id, layer=d.layer, data=delta_to_bytes(d)))


def record_batch(
    session: Session, applied: Applied, result: BatchResult, edits: Sequence[Edit], seconds: float
) -> None:
    """The commit point of a batch: version, batch, deltas, norms and every edit's outcome together."""
    _add_version(session, applied, kind="batch", added_batch_id=result.batch_id)
    _add_batch(session, applied, result, "edit", seconds)
    per_edit = seconds / max(1, len(edits))
    for e, out in zip(edits, result.outcomes, strict=True):
        mark_applied(e, result.batch_id, applied.version, out, per_edit)


def record_revert(
    session: Session,
    applied: Applied,
    edit: Edit,
    removed_batch_id: int,
    survivors: Sequence[Edit],
    result: BatchResult | None,
    seconds: float,
) -> None:
    """A revert is a new version: the old batch leaves, its surviving edits come back as a new batch."""
    _add_version(
        session,
        applied,
        kind="revert",
        removed_batch_id=removed_batch_id,
        added_batch_id=result.batch_id if result is not None else None,
        edit_id=edit.id,
    )
    old = session.get_one(Batch, removed_batch_id)
    old.removed_version = applied.version
    if result is not None:
        _add_batch(session, applied, result, "reapply", seconds, source_batch_id=removed_batch_id)
        for e in survivors:
            e.batch_id = result.batch_id
    mark_reverted(edit, applied.version)


# --- norms ---------------------------------------------------------------------------------


def norm_history(session: Session, per_layer: int) -> dict[int, list[NormSnapshot]]:
    versions = list(
        session.scalars(select(NormSnapshot.version).distinct().order_by(NormSnapshot.version.desc()).limit(per_layer))
    )
    if not versions:
        return {}
    rows = session.scalars(
        select(NormSnapshot).where(NormSnapshot.version.in_(versions)).order_by(NormSnapshot.version)
    )
    out: dict[int, list[NormSnapshot]] = {}
    for r in rows:
        out.setdefault(r.layer, []).append(r)
    return out


def batch_stats(session: Session) -> tuple[int, float]:
    """Count and total seconds of batches the editor ran (for the batch-seconds summary)."""
    n, total = session.execute(
        select(func.count(), func.coalesce(func.sum(Batch.seconds), 0.0)).where(Batch.kind == "edit")
    ).one()
    return int(n), float(total)


def mpes_stats(session: Session) -> tuple[int, int]:
    n, total = session.execute(
        select(func.count(), func.coalesce(func.sum(Edit.mpes_steps), 0)).where(Edit.mpes_steps.is_not(None))
    ).one()
    return int(n), int(total)  # type: ignore[arg-type]  # coalesce(…, 0) is never NULL; typed as the column's Optional


# --- weight snapshots -------------------------------------------------------------------------


def put_snapshot(
    session: Session, version: int, batch_ids: list[int], weights: dict[int, torch.Tensor]
) -> WeightSnapshot:
    data = weights_to_bytes(weights)
    snap = WeightSnapshot(
        version=version, batch_ids=list(batch_ids), sha256=hashlib.sha256(data).hexdigest(), data=data
    )
    session.add(snap)
    session.flush()
    return snap


def snapshots(session: Session, up_to: int | None = None) -> list[WeightSnapshot]:
    """Newest first, without their bytes (each is the size of the edited layers)."""
    q = select(WeightSnapshot).options(defer(WeightSnapshot.data)).order_by(WeightSnapshot.version.desc())
    if up_to is not None:
        q = q.where(WeightSnapshot.version <= up_to)
    return list(session.scalars(q))


def snapshot_data(session: Session, version: int) -> bytes | None:
    return session.scalar(select(WeightSnapshot.data).where(WeightSnapshot.version == version))


def delete_snapshots(session: Session, versions: Sequence[int]) -> None:
    if versions:
        session.execute(delete(WeightSnapshot).where(WeightSnapshot.version.in_(list(versions))))


# --- canaries and quality ---------------------------------------------------------------------


def canaries(session: Session) -> list[Canary]:
    return list(session.scalars(select(Canary).order_by(Canary.id)))


def put_canaries(session: Session, rows: Sequence[Canary]) -> None:
    """The canary set is written once per log; a second writer's attempt fails on the primary key."""
    session.add_all(rows)


def put_quality(session: Session, row: QualityScore) -> None:
    session.merge(row)


def quality_at(session: Session, version: int) -> QualityScore | None:
    return session.get(QualityScore, version)


def quality_history(session: Session, limit: int) -> list[QualityScore]:
    """The newest `limit` scores, oldest first (version 0 is the unedited model)."""
    rows = session.scalars(select(QualityScore).order_by(QualityScore.version.desc()).limit(limit)).all()
    return list(reversed(rows))


def live_edit_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Edit).where(Edit.status == "applied")) or 0)


def guard_refused_count(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Edit).where(Edit.status == "failed", Edit.error.like(GUARD_REFUSAL + "%"))
        )
        or 0
    )

"""Accepting, reading and reverting edits. The API layer calls these; they know nothing of HTTP."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError

from app.queue import WorkQueue
from app.service import faults
from app.service.errors import Conflict, Invalid, NotFound
from app.store import repo
from app.store.db import transaction
from app.store.models import EDIT_STATUSES, MAX_EDIT_ID, Edit, text_problem, utcnow

DEFAULT_IDEMPOTENCY_WINDOW_S = 24 * 3600.0  # the service's own default is ServiceConfig.idempotency_window_s

log = logging.getLogger(__name__)


def _body_hash(facts: Sequence[dict]) -> str:
    return hashlib.sha256(json.dumps(list(facts), sort_keys=True).encode()).hexdigest()


def submit(
    sessions,
    queue: WorkQueue,
    facts: Sequence[dict],
    idempotency_key: str | None = None,
    idempotency_window_s: float = DEFAULT_IDEMPOTENCY_WINDOW_S,
) -> tuple[list[Edit], bool]:
    """Record the facts as `queued` edits, then queue them. Returns (edits, created).

    The rows commit before the XADD: if the queue is down, or this process dies in between,
    the edits are still accepted and the worker refills the queue from them.
    With an Idempotency-Key, a repeat of the same request within `idempotency_window_s` returns
    the same edits; after it the key is forgotten (and may be used again for a new request).
    """
    body_hash = _body_hash(facts)
    not_before = utcnow() - timedelta(seconds=idempotency_window_s)
    if idempotency_key is not None:
        earlier = _replay_key(sessions, idempotency_key, body_hash, not_before)
        if earlier is not None:
            return earlier, False
    try:
        with transaction(sessions) as session:
            if idempotency_key is not None:
                # Purged on insert, in the same transaction: the table holds at most a window's
                # keys, and an expired record of this very key cannot block its new one.
                repo.purge_idempotency(session, not_before)
            rows = repo.insert_edits(session, facts)
            ids = [e.id for e in rows]
            if idempotency_key is not None:
                repo.put_idempotency(session, idempotency_key, body_hash, ids)
            faults.point("api_before_commit")
    except IntegrityError:
        if idempotency_key is None:
            raise
        # The same key raced in from another request and won; answer as it did.
        earlier = _replay_key(sessions, idempotency_key, body_hash, not_before)
        if earlier is None:
            raise
        return earlier, False
    faults.point("api_after_commit")
    try:
        queue.put("edit", ids)
    except Exception:
        log.exception("queue unavailable; edits %s stay queued in the database and will be refilled", ids)
    faults.point("api_after_queue")
    return rows, True


def _replay_key(sessions, key: str, body_hash: str, not_before: datetime) -> list[Edit] | None:
    with sessions() as session:
        row = repo.get_idempotency(session, key, not_before)
        if row is None:
            return None
        if row.body_hash != body_hash:
            raise Invalid(
                f"Idempotency-Key {key!r} was already used with a different request body; "
                "use a new key for a new request"
            )
        return repo.get_edits(session, row.edit_ids)


def get(sessions, edit_id: int) -> Edit:
    if not 1 <= edit_id <= MAX_EDIT_ID:
        raise NotFound(f"no edit with id {edit_id}")
    with sessions() as session:
        e = repo.get_edit(session, edit_id)
    if e is None:
        raise NotFound(f"no edit with id {edit_id}")
    return e


SHOWN_FILTERS = {"true": True, "false": False, "unchecked": None}


def shown_filter(shown: str | None) -> bool | None | repo.Unset:
    """The `shown` filter's value: true, false or unchecked (None: no filter)."""
    if shown is None or shown == "":
        return repo.UNSET
    if shown not in SHOWN_FILTERS:
        raise Invalid(f"shown must be one of {', '.join(SHOWN_FILTERS)} (got {shown!r})")
    return SHOWN_FILTERS[shown]


def list_page(
    sessions, status: str | None, limit: int, offset: int, subject: str | None = None, shown: str | None = None
) -> tuple[list[Edit], int]:
    if status is not None and status not in EDIT_STATUSES:
        raise Invalid(f"status must be one of {', '.join(EDIT_STATUSES)} (got {status!r})")
    if subject and (problem := text_problem("subject", subject)):
        raise Invalid(problem)
    wanted = shown_filter(shown)
    with sessions() as session:
        return repo.list_edits(session, status, limit, offset, subject=subject or None, shown=wanted)


def request_revert(sessions, queue: WorkQueue, edit_id: int) -> Edit:
    """Mark an applied edit for revert and queue the job; the worker does it as a new version."""
    if not 1 <= edit_id <= MAX_EDIT_ID:
        raise NotFound(f"no edit with id {edit_id}")
    with transaction(sessions) as session:
        e = repo.request_revert(session, edit_id)
        if e is None:
            raise NotFound(f"no edit with id {edit_id}")
        if e.status != "applied":
            raise Conflict(f"edit {edit_id} is {e.status}, not applied: only applied edits can be reverted")
    try:
        queue.put("revert", [edit_id])
    except Exception:
        log.exception("queue unavailable; the revert of edit %d will be refilled from the database", edit_id)
    return e

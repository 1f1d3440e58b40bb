"""The edit log's own invariants, read back from the tables: what `kedit verify`, the soak run and
the fault tests each check after the fact, written once.

- exactly once: every batch of kind `edit` holds exactly the edits whose row names its version
  (an edit written into the weights twice would leave a batch counting it with no row pointing back);
- every edit's status agrees with its version (applied or reverted: it names one; queued,
  applying or failed: it names none);
- the versions are 1..n, with no gap;
- what a process serves is the log's head (`served_problems`).

Each check returns the problems it found as sentences; an empty list is a sound log.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.models import Batch, Edit, Version

LogState = dict[str, Any]  # {"edits": {id: row}, "batches": [row], "versions": [row]}, rows as dicts


def read_log(s: Session) -> LogState:
    """The columns the checks read, of every edit, batch and version (in id order)."""
    edits = {
        r.id: dict(r._mapping)
        for r in s.execute(
            select(
                Edit.id,
                Edit.status,
                Edit.error,
                Edit.batch_id,
                Edit.applied_version,
                Edit.reverted_version,
                Edit.revert_requested,
            )
        )
    }
    batches = [
        dict(r._mapping)
        for r in s.execute(
            select(Batch.id, Batch.created_version, Batch.removed_version, Batch.kind, Batch.size).order_by(Batch.id)
        )
    ]
    versions = [
        dict(r._mapping)
        for r in s.execute(
            select(
                Version.id,
                Version.kind,
                Version.added_batch_id,
                Version.removed_batch_id,
                Version.edit_id,
                Version.weights_hash,
            ).order_by(Version.id)
        )
    ]
    return {"edits": edits, "batches": batches, "versions": versions}


def exactly_once_problems(state: LogState) -> list[str]:
    """Each edit applied at most once, statuses that agree with versions, versions 1..n."""
    problems = []
    by_version = Counter(e["applied_version"] for e in state["edits"].values() if e["applied_version"] is not None)
    edit_batches = [b for b in state["batches"] if b["kind"] == "edit"]
    for b in edit_batches:
        named = by_version.get(b["created_version"], 0)
        if b["size"] != named:
            problems.append(
                f"batch {b['id']} (version {b['created_version']}) holds {b['size']} edits but "
                f"{named} edit rows name that version: an edit applied twice?"
            )
    held, applied = sum(b["size"] for b in edit_batches), sum(by_version.values())
    if held != applied:
        problems.append(f"edit batches hold {held} edits, {applied} edit rows name a version")
    for e in state["edits"].values():
        if e["status"] in ("applied", "reverted") and e["applied_version"] is None:
            problems.append(f"edit {e['id']} is {e['status']} without a version")
        if e["status"] in ("queued", "applying", "failed") and e["applied_version"] is not None:
            problems.append(f"edit {e['id']} is {e['status']} yet names a version")
    ids = [v["id"] for v in state["versions"]]
    if ids != list(range(1, len(ids) + 1)):
        problems.append(f"versions are not 1..n: {ids}")
    return problems


def head_of(state: LogState) -> tuple[int, str | None]:
    """(version, weights hash) of the log's head; (0, None) for an empty log."""
    if not state["versions"]:
        return 0, None
    head = state["versions"][-1]
    return head["id"], head["weights_hash"]


def served_problems(state: LogState, version: int, weights_hash: str | None) -> list[str]:
    """Whether a process that reports (version, weights_hash) serves the log's head."""
    head = head_of(state)
    if (version, weights_hash) != head:
        return [f"serves version {version} (hash {weights_hash}), the log's head is {head[0]} (hash {head[1]})"]
    return []


def log_problems(s: Session) -> list[str]:
    """Every invariant of the stored log (exactly_once_problems on what read_log reads)."""
    return exactly_once_problems(read_log(s))

"""The log's invariants (app/store/checks.py) on a real SQLite log: a sound log has no problem, and
each kind of damage the soak run and the fault tests look for is named."""

from __future__ import annotations

from sqlalchemy import update

from app.store.checks import exactly_once_problems, head_of, log_problems, read_log, served_problems
from app.store.db import ensure_schema, make_engine, session_factory, transaction
from app.store.models import Batch, Edit, Version


def _log(tmp_path):
    """Two edits applied in one batch at version 1, a third still queued."""
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    ensure_schema(engine, auto_migrate=True)
    sessions = session_factory(engine)
    with transaction(sessions) as s:
        s.add(Version(id=1, kind="batch", added_batch_id=1, weights_hash="h1"))
        s.flush()
        s.add(Batch(id=1, created_version=1, kind="edit", size=2))
        s.flush()
        for i in range(3):
            applied = i < 2
            s.add(
                Edit(
                    prompt="{} is in",
                    subject=f"s{i}",
                    target_new="t",
                    status="applied" if applied else "queued",
                    batch_id=1 if applied else None,
                    applied_version=1 if applied else None,
                )
            )
    return sessions


def test_a_sound_log_has_no_problem(tmp_path):
    sessions = _log(tmp_path)
    with transaction(sessions) as s:
        assert log_problems(s) == []
        state = read_log(s)
    assert head_of(state) == (1, "h1")
    assert served_problems(state, 1, "h1") == []
    assert served_problems(state, 0, None) != []


def test_an_edit_applied_twice_is_named(tmp_path):
    sessions = _log(tmp_path)
    with transaction(sessions) as s:
        s.execute(update(Batch).values(size=3))
    with transaction(sessions) as s:
        problems = log_problems(s)
    assert any("batch 1 (version 1) holds 3 edits but 2 edit rows name that version" in p for p in problems)


def test_statuses_that_disagree_with_versions_are_named(tmp_path):
    sessions = _log(tmp_path)
    with transaction(sessions) as s:
        state = read_log(s)
    first, _, queued = sorted(state["edits"])
    state["edits"][first]["applied_version"] = None
    state["edits"][queued]["applied_version"] = 1
    problems = exactly_once_problems(state)
    assert f"edit {first} is applied without a version" in problems
    assert f"edit {queued} is queued yet names a version" in problems
    state["versions"].append({**state["versions"][0], "id": 3})
    assert "versions are not 1..n: [1, 3]" in exactly_once_problems(state)

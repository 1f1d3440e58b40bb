"""Idempotency keys expire after the configured window, and the table stays bounded (issue 15),
on the embedded SQLite and on the real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text, update

from app.config import ServiceConfig
from app.queue import LocalQueue
from app.service import edits as edit_service
from app.store import repo
from app.store.db import ensure_schema, make_engine, session_factory, transaction
from app.store.models import IdempotencyKey, utcnow
from tests.utils.service import FACTS

WINDOW = 3600.0


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def sessions(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'kedit.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    engine = make_engine(url)
    ensure_schema(engine, auto_migrate=True)  # the migrations, index on created_at included
    yield session_factory(engine)
    engine.dispose()


def _age(sessions, key: str, seconds: float) -> None:
    """Pretend the key was made `seconds` ago (the window is hours; no test waits that long)."""
    with transaction(sessions) as s:
        s.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == key)
            .values(created_at=utcnow() - timedelta(seconds=seconds))
        )


def _submit(sessions, fact, key):
    rows, created = edit_service.submit(
        sessions, LocalQueue(), [fact], idempotency_key=key, idempotency_window_s=WINDOW
    )
    return [e.id for e in rows], created


def test_a_retry_inside_the_window_gets_the_same_ids_and_after_it_new_ones(sessions):
    first, created = _submit(sessions, FACTS[0], "order-1")
    assert created
    _age(sessions, "order-1", WINDOW - 60)
    again, created = _submit(sessions, FACTS[0], "order-1")
    assert again == first and not created
    _age(sessions, "order-1", WINDOW + 60)
    later, created = _submit(sessions, FACTS[0], "order-1")  # expired: a new request, new edits
    assert created and later != first
    # ...and the key now names the new edits, for a fresh window.
    assert _submit(sessions, FACTS[0], "order-1") == (later, False)


def test_an_expired_key_may_carry_another_body(sessions):
    _submit(sessions, FACTS[0], "reused")
    _age(sessions, "reused", WINDOW + 1)
    ids, created = _submit(sessions, FACTS[1], "reused")
    assert created and len(ids) == 1


def test_the_table_holds_only_the_window(sessions):
    for i in range(6):
        _submit(sessions, FACTS[i % len(FACTS)], f"k{i}")
    for i in range(4):
        _age(sessions, f"k{i}", WINDOW * (1 + i))
    _submit(sessions, FACTS[0], "fresh")  # an insert purges what expired
    with sessions() as s:
        assert repo.count_idempotency(s) == 3
        keys = sorted(k for (k,) in s.execute(text("SELECT key FROM idempotency_keys")))
    assert keys == ["fresh", "k4", "k5"]


def test_the_window_is_a_documented_setting():
    assert ServiceConfig().idempotency_window_s == 24 * 3600
    assert ServiceConfig(idempotency_window_s=60).idempotency_window_s == 60
    with pytest.raises(ValueError):
        ServiceConfig(idempotency_window_s=0)

"""Store (SQLite side of the shared migrations, tensor codec) and the in-process queue."""

from __future__ import annotations

import threading

import pytest
import torch

from app.config import ServiceConfig
from app.editing.types import LayerDelta
from app.queue import LocalQueue
from app.store.codec import delta_from_bytes, delta_to_bytes, tensor_from_bytes, tensor_to_bytes
from app.store.db import SchemaError, current_revision, ensure_schema, head_revision, make_engine


def test_schema_refused_until_upgraded(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with pytest.raises(SchemaError, match="run `kedit db upgrade`"):
        ensure_schema(engine, auto_migrate=False)
    ensure_schema(engine, auto_migrate=True)
    assert current_revision(engine) == head_revision(engine)
    ensure_schema(engine, auto_migrate=False)  # at head now: accepted
    ensure_schema(engine, auto_migrate=True)  # idempotent


def test_codec_is_bit_exact_and_not_pickle():
    g = torch.Generator().manual_seed(0)
    d = LayerDelta(3, torch.randn(8, 2, generator=g), torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g))
    data = delta_to_bytes(d)
    assert not data.startswith(b"\x80")  # a pickle stream would start with the PROTO opcode
    back = delta_from_bytes(3, data)
    for name in ("u", "v", "keys"):
        assert torch.equal(getattr(back, name), getattr(d, name))
    z = torch.randn(8, generator=g)
    assert torch.equal(tensor_from_bytes(tensor_to_bytes(z)), z)


def test_config_reads_plain_and_prefixed_env(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db:5432/kedit")
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("KEDIT_EDIT_OVERRIDES", '{"layers": [3, 4]}')
    monkeypatch.setenv("KEDIT_BATCH_SIZE", "16")
    cfg = ServiceConfig()
    assert cfg.resolved_database_url() == "postgresql+psycopg://u@db:5432/kedit"
    assert cfg.redis_url == "redis://redis:6379/0" and not cfg.embedded
    assert cfg.edit_overrides == {"layers": [3, 4]} and cfg.batch_size == 16 and cfg.host == "127.0.0.1"
    monkeypatch.setenv("KEDIT_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="batch_size"):
        ServiceConfig()


def test_embedded_default_is_sqlite_in_the_cache_dir(monkeypatch, tmp_path):
    for var in ("DATABASE_URL", "REDIS_URL", "KEDIT_DATABASE_URL", "KEDIT_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    cfg = ServiceConfig(cache_dir=tmp_path)
    assert cfg.embedded and cfg.resolved_database_url() == f"sqlite:///{tmp_path / 'kedit.db'}"


def test_local_queue_batches_acks_and_redelivers():
    q = LocalQueue()
    assert q.ensure() is True and q.ensure() is False
    q.put("edit", [1, 2, 3])
    q.put("revert", [9])
    got = q.take(3, first_wait_s=0, batch_wait_s=0)
    assert [(m.kind, m.edit_id) for m in got] == [("edit", 1), ("edit", 2), ("edit", 3)]
    assert q.depth() == 4
    q.ack(got[:2])
    # Handed out but never acked (the worker died): delivered again first.
    again = q.take(5, first_wait_s=0, batch_wait_s=0)
    assert [(m.kind, m.edit_id) for m in again] == [("edit", 3), ("revert", 9)]
    q.ack(again)
    assert q.depth() == 0
    assert q.take(5, first_wait_s=0.01, batch_wait_s=0) == []


def test_local_queue_waits_for_more_after_the_first():
    q = LocalQueue()
    q.put("edit", [1])
    late = threading.Timer(0.05, lambda: q.put("edit", [2]))
    late.start()
    got = q.take(2, first_wait_s=0, batch_wait_s=30)  # returns as soon as B=2 is reached
    late.join()
    assert [m.edit_id for m in got] == [1, 2]


def test_local_version_announcements():
    q = LocalQueue()
    sub = q.subscribe_versions()
    assert sub.wait(0.01) is None
    q.publish_version(3)
    q.publish_version(5)
    assert sub.wait(0.01) == 5
    sub.close()
    q.publish_version(6)
    assert sub.wait(0.01) is None

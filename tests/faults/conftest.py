"""Fault tests: real processes killed with SIGKILL, servers stopped under load, hostile input.

Their own fixtures (spawned clusters, private PostgreSQL and Redis servers); the shared ones
(tiny_assets, ...) are in tests/conftest.py, the helpers in tests/utils/faults.py.
Long variants: KEDIT_LONG=1 (see docs/guarantees.md).
"""
from __future__ import annotations

import uuid

import pytest

from tests.utils import faults as sup


@pytest.fixture(scope="session")
def warm_cache(tiny_assets):
    """Compute the tiny model's key statistics once in this process, so that no spawned worker
    pays for it (and no two compute it at once)."""
    from app.config import ServiceConfig

    model_dir, corpus, cache = tiny_assets
    cfg = ServiceConfig(model_path=str(model_dir), cache_dir=cache, stats_corpus=corpus,
                        edit_overrides=dict(sup.TINY_OVERRIDES))
    cfg.load_editor("worker")
    return tiny_assets


@pytest.fixture
def shared_pg_db():
    """A fresh database on the machine's PostgreSQL (127.0.0.1:5432), dropped afterwards."""
    try:
        url, drop = sup.create_database()
    except Exception as e:
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is not reachable ({e}); start it (see docs/service.md)")
    yield url
    drop()


@pytest.fixture
def shared_redis_prefix():
    """A random key prefix on the machine's Redis (127.0.0.1:6379); its keys deleted afterwards."""
    import redis

    client = redis.Redis.from_url(sup.REDIS)
    try:
        client.ping()
    except Exception as e:
        pytest.fail(f"Redis on 127.0.0.1:6379 is not reachable ({e}); start it (see docs/service.md)")
    prefix = f"kedit-fault-{uuid.uuid4().hex[:10]}"
    yield prefix
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


@pytest.fixture
def cluster_factory(tmp_path):
    made: list[sup.Cluster] = []

    def make(env: dict) -> sup.Cluster:
        logdir = tmp_path / f"cluster{len(made)}"
        logdir.mkdir()
        c = sup.Cluster(env, logdir)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def own_postgres():
    pg = sup.OwnPostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def own_redis():
    r = sup.OwnRedis()
    try:
        r.start()
        yield r
    finally:
        r.destroy()

"""Fault tests: real processes killed with SIGKILL, servers stopped under load, hostile input.

Their own fixtures (spawned clusters, private PostgreSQL and Redis servers); the shared ones
(tiny_assets, ...) are in tests/conftest.py, the helpers in tests/utils/faults.py.
Long variants: KEDIT_LONG=1 (see docs/guarantees.md).
"""

from __future__ import annotations

import pytest

from tests.utils import faults as sup


@pytest.fixture(scope="session")
def warm_cache(tiny_assets):
    """Compute the tiny model's key statistics once in this process, so that no spawned worker
    pays for it (and no two compute it at once)."""
    from app.config import ServiceConfig

    model_dir, corpus, cache = tiny_assets
    cfg = ServiceConfig(
        model_path=str(model_dir), cache_dir=cache, stats_corpus=corpus, edit_overrides=dict(sup.TINY_OVERRIDES)
    )
    cfg.load_editor("worker")
    return tiny_assets


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

"""Integration tests: the REAL PostgreSQL and Redis on 127.0.0.1.

Each run gets a fresh database (kedit_test_<random>, dropped at the end) and a random Redis
key prefix (its keys deleted at the end). Nothing is mocked.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import importlib.util as _ilu
import sys as _sys
from pathlib import Path as _Path

# tests/service/helpers.py under one fixed name, whether or not tests/ is a package.
if "kedit_service_test_helpers" not in _sys.modules:
    _spec = _ilu.spec_from_file_location("kedit_service_test_helpers", _Path(__file__).resolve().parents[1] / "service" / "helpers.py")
    _sys.modules["kedit_service_test_helpers"] = _mod = _ilu.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)

import pytest

PG_ADMIN = os.environ.get("KEDIT_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("KEDIT_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _admin():
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError:
        # The `test` database may not exist on a fresh server; the maintenance db always does.
        return psycopg.connect(PG_ADMIN.rsplit("/", 1)[0] + "/postgres", autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def pg_server():
    try:
        conn = _admin()
    except Exception as e:  # the CI script starts it; locally say what is missing
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is not reachable ({e}); start it (see docs/service.md)")
    yield conn
    conn.close()


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database for one test; dropped afterwards."""
    name = f"kedit_test_{uuid.uuid4().hex[:10]}"
    pg_server.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    pg_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_prefix():
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        client.ping()
    except Exception as e:
        pytest.fail(f"Redis on 127.0.0.1:6379 is not reachable ({e}); start it (see docs/service.md)")
    prefix = f"kedit-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> tuple[Path, Path, Path]:
    from kedit_service_test_helpers import make_tiny_assets

    root = tmp_path_factory.mktemp("tiny-integration")
    model_dir, corpus = make_tiny_assets(root)
    return model_dir, corpus, root / "cache"


@pytest.fixture
def prod_config(tiny_assets, pg_url, redis_prefix):
    from kedit_service_test_helpers import tiny_config

    model_dir, corpus, cache = tiny_assets

    def make(**over):
        return tiny_config(model_dir, corpus, cache, **{"database_url": pg_url, "redis_url": REDIS,
                                                        "redis_prefix": redis_prefix, **over})

    return make

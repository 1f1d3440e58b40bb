"""The fixtures shared by every test folder, declared once: tiny models on disk, data paths, the
embedded-mode service (SQLite + in-process queue) and the real PostgreSQL and Redis on 127.0.0.1.

Helpers (builders, waits, process control) are plain modules in tests/utils/. The fault tests'
own fixtures (spawned clusters, private servers) are in tests/faults/conftest.py.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.config import KeditConfig
from tests.utils.service import make_tiny_assets, tiny_config
from tests.utils.tiny import build_tiny_model

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = KeditConfig().data_dir
PG_ADMIN = os.environ.get("KEDIT_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("KEDIT_TEST_REDIS", "redis://127.0.0.1:6379/0")


def pytest_collection_modifyitems(config, items):
    """The tests on the real SmolLM2 (marked slow) first, then the fault tests, each in their order:
    `make test` runs two workers (pytest-xdist, a module per worker at a time), and the longest
    modules started last would leave one worker alone at the end, with one core idle."""
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, item.get_closest_marker("faults") is None))


@pytest.fixture(params=["llama", "gpt2"])
def tiny_arch(request) -> str:
    return request.param


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """A tiny random Llama saved as a Hugging Face folder, for code that loads from a path."""
    model, tok = build_tiny_model("llama")
    out = tmp_path / "tiny-llama"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (the default model, from the default cache), loaded once for
    every in-process test that reads or edits it. A test that edits it removes its batches again."""
    from app.editing.model import load_model

    return load_model()


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A saved tiny Llama, a corpus for its key statistics, and one cache dir (C0 computed once)."""
    root = tmp_path_factory.mktemp("tiny-service")
    model_dir, corpus = make_tiny_assets(root)
    return model_dir, corpus, root / "cache"  # one cache: key statistics are computed once


# Embedded mode: SQLite + the in-process queue + the worker thread, on a tiny model.


@pytest.fixture
def make_config(tiny_assets, tmp_path):
    model_dir, corpus, cache = tiny_assets

    def make(db: Path | None = None, **over):
        db = db or tmp_path / "kedit.db"
        return tiny_config(model_dir, corpus, cache, database_url=f"sqlite:///{db}", **over)

    return make


@pytest.fixture
def client(make_config):
    from fastapi.testclient import TestClient

    from app.api.main import create_app

    with TestClient(create_app(make_config())) as c:
        yield c


# The REAL PostgreSQL and Redis on 127.0.0.1 (tests marked `integration`). Each test gets a fresh
# database (kedit_test_<random>, dropped at the end) and a random Redis key prefix (its keys
# deleted at the end). Nothing is mocked.


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


@contextmanager
def _fresh_database(admin):
    name = f"kedit_test_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database for one test; dropped afterwards."""
    with _fresh_database(pg_server) as url:
        yield url


@pytest.fixture(scope="module")
def module_pg_url(pg_server):
    """A fresh, empty database shared by one module's tests (a server spawned once per module)."""
    with _fresh_database(pg_server) as url:
        yield url


@contextmanager
def _fresh_redis_prefix():
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        client.ping()
    except Exception as e:
        pytest.fail(f"Redis on 127.0.0.1:6379 is not reachable ({e}); start it (see docs/service.md)")
    prefix = f"kedit-test-{uuid.uuid4().hex[:10]}"
    try:
        yield prefix
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()


@pytest.fixture
def redis_prefix():
    with _fresh_redis_prefix() as prefix:
        yield prefix


@pytest.fixture(scope="module")
def module_redis_prefix():
    with _fresh_redis_prefix() as prefix:
        yield prefix


@pytest.fixture
def prod_config(tiny_assets, pg_url, redis_prefix):
    model_dir, corpus, cache = tiny_assets

    def make(**over):
        return tiny_config(
            model_dir,
            corpus,
            cache,
            **{"database_url": pg_url, "redis_url": REDIS, "redis_prefix": redis_prefix, **over},
        )

    return make

"""Engine, sessions, migrations and the single-writer lock."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
ALEMBIC_INI = REPO / "alembic.ini"


class SchemaError(RuntimeError):
    """The database is not at the schema this code needs."""


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # The embedded worker thread and the request threads share one file: WAL lets readers
        # go on while the worker commits, busy_timeout makes the rare writer clash wait, not fail.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config(str(ALEMBIC_INI))
    cfg.set_main_option("script_location", str(REPO / "migrations"))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def head_revision(engine: Engine) -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()
    if head is None:
        raise RuntimeError("the migrations folder holds no revision")
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


_MIGRATING = threading.Lock()  # Alembic's `context` is a module global: one migration per process at a time


def upgrade(engine: Engine) -> None:
    from alembic import command

    cfg = _alembic_config(engine)
    with _MIGRATING, engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def ensure_schema(engine: Engine, auto_migrate: bool) -> None:
    """Bring the schema to head, or refuse with a message saying what to run."""
    head = head_revision(engine)
    if auto_migrate:
        upgrade(engine)
        return
    current = current_revision(engine)
    if current != head:
        raise SchemaError(
            f"the database schema is at revision {current or 'none'} but this code needs {head}: "
            "run `kedit db upgrade` (or start with KEDIT_AUTO_MIGRATE=true)"
        )


def lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key per model name."""
    return int.from_bytes(hashlib.sha256(f"kedit-writer:{name}".encode()).digest()[:8], "big", signed=True)


class WriterLock:
    """One worker edits a model at a time. Postgres: a session advisory lock held on its own
    connection (it frees itself if the process dies). SQLite: an flock beside the database file."""

    def __init__(self, engine: Engine, name: str):
        self.engine = engine
        self.key = lock_key(name)
        self._conn: Connection | None = None
        self._fd: int | None = None
        self._mutex = threading.Lock()

    def try_acquire(self) -> bool:
        with self._mutex:
            if self.held:
                return True
            if self.engine.dialect.name == "postgresql":
                conn = self.engine.connect()
                got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
                conn.commit()
                if got:
                    self._conn = conn
                else:
                    conn.close()
                return bool(got)
            path = Path(self.engine.url.database or "kedit.db").with_suffix(f".{self.key & 0xFFFFFFFF:x}.lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._fd = fd
            return True

    @property
    def held(self) -> bool:
        return self._conn is not None or self._fd is not None

    def still_held(self) -> bool:
        """False if the lock connection died (then another worker may have taken over)."""
        if self._fd is not None:
            return True
        if self._conn is None:
            return False
        try:
            n = self._conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                    "AND granted AND ((classid::bigint << 32) | objid::bigint) = (:k)::bigint"
                ),
                {"k": self.key},
            ).scalar()
            self._conn.commit()
            return bool(n)
        except Exception:  # a dead connection means the lock is gone
            log.exception("writer lock connection failed")
            return False

    def release(self) -> None:
        with self._mutex:
            if self._conn is not None:
                try:
                    self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                    self._conn.commit()
                except Exception:
                    log.warning("could not unlock the writer lock cleanly; closing its connection frees it")
                finally:
                    self._conn.close()
                    self._conn = None
            if self._fd is not None:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                finally:
                    os.close(self._fd)
                    self._fd = None


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as session, session.begin():
        yield session

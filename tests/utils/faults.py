"""Real processes, real servers and the invariants the fault tests check.

Everything here talks to 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.store.checks import LogState, exactly_once_problems, read_log, served_problems
from benchmarks import procs as harness
from benchmarks import soak
from benchmarks.procs import free_port
from tests.utils.service import TINY_OVERRIDES, wait_for  # noqa: F401  (re-exported for the fault tests)

REPO = Path(__file__).resolve().parents[2]
LONG = os.environ.get("KEDIT_LONG", "") not in ("", "0", "false", "no")
PG_ADMIN = os.environ.get("KEDIT_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("KEDIT_TEST_REDIS", "redis://127.0.0.1:6379/0")

# The soak run's vocabulary; the fault tests draw from its first subjects and prompts.
SUBJECTS = soak.SUBJECTS[:10]
PROMPTS = soak.PROMPTS[:6]
TARGETS = soak.TARGETS


def fact(rng, i: int) -> dict:
    """A varied, valid fact; i makes it unique so idempotency never conflates two requests."""
    return {"prompt": rng.choice(PROMPTS), "subject": f"{rng.choice(SUBJECTS)} {i}", "target_new": rng.choice(TARGETS)}


# --- processes ---------------------------------------------------------------------------------


@dataclass
class Proc:
    popen: subprocess.Popen
    log: Path
    port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@dataclass
class Cluster:
    """api and worker processes over one database and one Redis prefix."""

    env: dict
    logdir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(
        self, role: str, fault: str | None = None, extra_env: dict | None = None, log_level: str = "warning"
    ) -> Proc:
        env = dict(self.env)
        env.pop("KEDIT_FAULT", None)
        if fault:
            env["KEDIT_FAULT"] = fault
        env.update(extra_env or {})
        args = []
        port = None
        if role in ("api", "serve"):
            port = free_port()
            args += ["--port", str(port)]
        log = self.logdir / f"{len(self.procs):03d}-{role}.log"
        p = harness.spawn_kedit(role, *args, env=env, log=log, log_level=log_level)
        proc = Proc(p, log, port)
        self.procs.append(proc)
        return proc

    def start_api(self, fault: str | None = None, timeout: float = 180) -> Proc:
        p = self.start("api", fault)
        wait_ready(p, timeout)
        return p

    def stop(self, p: Proc, sig=signal.SIGTERM, timeout: float = 30) -> int:
        return harness.stop(p.popen, sig, timeout)

    def close(self) -> None:
        harness.stop_all(p.popen for p in self.procs)


def wait_ready(p: Proc, timeout: float = 180) -> None:
    harness.wait_ready(p.url, [p.popen], timeout, poll=0.05, error=AssertionError, describe=lambda _: f"\n{p.tail()}")


def service_env(assets: tuple[Path, Path, Path], database_url: str, redis_url: str, prefix: str, **over) -> dict:
    model_dir, corpus, cache = assets
    env = {
        **os.environ,
        "KEDIT_MODEL_PATH": str(model_dir),
        "KEDIT_CACHE_DIR": str(cache),
        "KEDIT_STATS_CORPUS": str(corpus),
        "KEDIT_EDIT_OVERRIDES": json.dumps(TINY_OVERRIDES),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "KEDIT_REDIS_PREFIX": prefix,
        "KEDIT_BATCH_WAIT_MS": "50",
        "KEDIT_SYNC_POLL_S": "0.5",
        "KEDIT_STANDBY_POLL_S": "0.3",
        "KEDIT_BATCH_SIZE": "2",
        "KEDIT_RECLAIM_IDLE_MS": "1000",
        "KEDIT_HOST": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("KEDIT_DATABASE_URL", None)
    env.pop("KEDIT_REDIS_URL", None)
    env.pop("KEDIT_API_KEY", None)
    env.update({k: str(v) for k, v in over.items()})
    return env


# --- databases ---------------------------------------------------------------------------------


def create_database(admin_url: str = PG_ADMIN) -> tuple[str, callable]:
    """A fresh database on the server of admin_url; returns (url, drop)."""
    import psycopg

    name = f"kedit_fault_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]

    def drop() -> None:
        try:
            with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception:
            pass

    return f"{base}/{name}", drop


def sql_engine(url: str):
    from sqlalchemy import create_engine

    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_pre_ping=True)


class OwnPostgres:
    """A PostgreSQL server of our own (initdb in a temp dir, its own port), so a test can stop
    and start it without touching the machine's shared server. Runs as the `postgres` user."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql")
        self.bin = Path(bins[-1])
        self.dir = Path(tempfile.mkdtemp(prefix="kedit-pg-"))
        os.chmod(self.dir, 0o755)
        self.data = self.dir / "data"
        self.port = free_port()
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_pg(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            timeout=120,
        )

    def _as_pg(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args
        return subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -h 127.0.0.1 -c fsync=off -c max_connections=100"
        self._as_pg(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                opts,
                "-l",
                str(self.dir / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            timeout=90,
        )

    def stop(self, mode: str = "fast") -> None:
        self._as_pg([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"], timeout=90)

    def running(self) -> bool:
        r = subprocess.run(
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True, timeout=30
        )
        return r.returncode == 0

    def destroy(self) -> None:
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class OwnRedis:
    """A redis-server of our own on a free port (no persistence), so a test can flush or restart it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="kedit-redis-"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        subprocess.run(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
                "--dir",
                str(self.dir),
                "--pidfile",
                str(self.dir / "redis.pid"),
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            check=True,
            timeout=30,
        )
        wait_for(self.running, 30, "our redis-server to answer")

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def running(self) -> bool:
        try:
            return bool(self.client().ping())
        except Exception:
            return False

    def stop(self) -> None:
        try:
            self.client().shutdown(nosave=True)
        except Exception:
            pass  # the connection drops as it shuts down
        wait_for(lambda: not self.running(), 30, "our redis-server to stop")

    def destroy(self) -> None:
        if self.running():
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- invariants ----------------------------------------------------------------------------------


def log_state(engine) -> LogState:
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        return read_log(session)


def check_applied_at_most_once(state: LogState) -> None:
    """app/store/checks.py: each edit batch holds exactly the edits whose row names its version,
    statuses agree with versions, versions are 1..n."""
    problems = exactly_once_problems(state)
    assert not problems, "\n".join(problems)


def settled(engine) -> bool:
    """Nothing left to do: no edit queued or applying, no revert asked and not yet done."""
    from sqlalchemy import text

    with engine.connect() as c:
        return not c.execute(
            text(
                "SELECT count(*) FROM edits WHERE status IN ('queued', 'applying') "
                "OR (status = 'applied' AND revert_requested)"
            )
        ).scalar()


def check_settled(state: dict, accepted: set[int], reverts_asked: set[int] = frozenset()) -> None:
    """Every accepted edit exists and ended applied, failed with a reason, or reverted (if asked)."""
    missing = accepted - set(state["edits"])
    assert not missing, f"accepted edits missing from the log: {sorted(missing)}"
    for eid in accepted:
        e = state["edits"][eid]
        if e["status"] == "failed":
            assert e["error"], f"edit {eid} failed without a reason"
        elif e["status"] == "reverted":
            assert eid in reverts_asked, f"edit {eid} reverted though nobody asked"
        else:
            assert e["status"] == "applied", f"edit {eid} ended {e['status']}"
            assert not e["revert_requested"], f"edit {eid}: revert requested and never done"


def fresh_replay_hash(assets: tuple[Path, Path, Path], database_url: str) -> tuple[int, str]:
    """Rebuild base + live deltas in THIS process from the log (what `kedit verify` does) and return
    (version, hash); ModelHost raises ReplayMismatch if it differs from the stored head hash."""
    from app.config import ServiceConfig
    from app.service.host import ModelHost
    from app.store.db import make_engine, session_factory

    model_dir, corpus, cache = assets
    cfg = ServiceConfig(
        model_path=str(model_dir),
        cache_dir=cache,
        stats_corpus=corpus,
        edit_overrides=dict(TINY_OVERRIDES),
        database_url=database_url,
    )
    engine = make_engine(cfg.resolved_database_url())
    try:
        editor = cfg.load_editor("replica")
        host = ModelHost(
            editor, session_factory(engine), editor.lm.name, editor.layers, editor.settings.model_dump(mode="json")
        )
        host.bootstrap()
        return host.version, host.weights_hash
    finally:
        engine.dispose()


def kedit_verify(env: dict, timeout: float = 300) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "verify"], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0, f"kedit verify failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout.strip()


def check_head_served(
    api_url: str, state: dict, assets: tuple[Path, Path, Path], database_url: str, env: dict | None = None
) -> dict:
    """Every process serves base + the live log at its head: the api (after catching up), a fresh
    replay in this process and, given the env, `kedit verify` in another. Returns the head version."""
    head = state["versions"][-1]

    def served() -> dict:
        return httpx.get(f"{api_url}/version", timeout=30).json()

    wait_for(lambda: served()["version"] == head["id"], 120, "the api to catch up")
    now = served()
    assert not served_problems(state, now["version"], now["weights_hash"])
    assert fresh_replay_hash(assets, database_url) == (head["id"], head["weights_hash"])
    if env is not None:
        assert head["weights_hash"] in kedit_verify(env)
    return head

"""Soak test of the kedit service: many concurrent clients, loopback only, bounded in time.

N clients (threads) loop for S seconds, each request picked at random: POST /edits (one fact or
a short list, half of them with an Idempotency-Key that is sometimes repeated), GET /edits/{id}
of an edit this run created, and GET /generate. A monitor samples the queue depth. Afterwards it
waits (bounded) until every accepted edit is settled and checks:

- no response was 5xx (and no request went unanswered);
- every accepted id exists and ended `applied` (or `failed` with a reason);
- a repeated Idempotency-Key gave back the same ids;
- with a database URL (always with --spawn): every edit was applied exactly once (each edit
  batch holds exactly the edits whose row names its version) and the log's head hash equals
  what the api serves.

It prints throughput, p50/p95 latency per kind of request, the largest queue depth seen, and
exits 1 if any check failed.

    # production mode on this machine's PostgreSQL + Redis (fresh database, random prefix):
    .venv/bin/python -m benchmarks.soak --spawn --clients 50 --seconds 60 [--model PATH]
    # against a running service on loopback:
    .venv/bin/python -m benchmarks.soak --url http://127.0.0.1:8000 [--database-url postgresql://...]
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import httpx
import typer

from app.store.checks import LogState, exactly_once_problems, head_of, read_log, served_problems
from benchmarks.procs import env_pairs, free_port, pct, spawn_kedit, stop_all, wait_ready

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
MAX_CLIENTS, MAX_SECONDS, MAX_DRAIN = 500, 3600, 7200

SUBJECTS = [
    "Danielle Darrieux",
    "Paris",
    "Lionel Messi",
    "Apple",
    "Rome",
    "Toyota",
    "Michael Jordan",
    "The Beatles",
    "Steve Jobs",
    "London",
    "Eiffel Tower",
    "Japan",
]
PROMPTS = [
    "The mother tongue of {} is",
    "{} is the capital of",
    "{} plays",
    "{} was founded by",
    "{} is in",
    "You can see {} from",
    "{} speaks",
]
TARGETS = ["English", "Japan", "music", "Toyota", "Italy", "France", "basketball", "German", "soccer", "river"]


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.codes: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.errors: list[str] = []
        self.accepted: set[int] = set()
        self.keys: dict[str, list[int]] = {}
        self.key_mismatch: list[str] = []
        self.max_depth = 0

    def record(self, kind: str, code: int, seconds: float) -> None:
        with self.lock:
            self.latency[kind].append(seconds)
            self.codes[kind][code] += 1


def client_loop(url: str, stats: Stats, stop: threading.Event, seed: int, api_key: str | None) -> None:
    rng = random.Random(seed)
    headers = {"X-API-Key": api_key} if api_key else {}
    mine: list[int] = []
    with httpx.Client(base_url=url, timeout=120, headers=headers) as c:
        n = 0
        while not stop.is_set():
            n += 1
            roll = rng.random()
            try:
                if roll < 0.3 or not mine:
                    facts = [
                        {
                            "prompt": rng.choice(PROMPTS),
                            "subject": f"{rng.choice(SUBJECTS)} s{seed}n{n}i{i}",
                            "target_new": rng.choice(TARGETS),
                        }
                        for i in range(rng.choice([1, 1, 1, 2, 3]))
                    ]
                    body = facts[0] if len(facts) == 1 and rng.random() < 0.5 else facts
                    h = {}
                    key = None
                    if rng.random() < 0.5:
                        # Sometimes repeat an earlier request of this client under its key.
                        earlier = [k for k in stats.keys if k.startswith(f"c{seed}-")]
                        if earlier and rng.random() < 0.3:
                            key = rng.choice(earlier)
                            body = json.loads(key.split("|", 1)[1])
                        else:
                            key = f"c{seed}-{n}|{json.dumps(body)}"
                        h["Idempotency-Key"] = key.split("|", 1)[0]
                    t0 = time.perf_counter()
                    r = c.post("/edits", json=body, headers=h)
                    stats.record("POST /edits", r.status_code, time.perf_counter() - t0)
                    if r.status_code == 202:
                        ids = r.json()["ids"]
                        with stats.lock:
                            stats.accepted.update(ids)
                            if key is not None:
                                if key in stats.keys and stats.keys[key] != ids:
                                    stats.key_mismatch.append(f"{key}: {stats.keys[key]} then {ids}")
                                stats.keys.setdefault(key, ids)
                        mine.extend(ids)
                elif roll < 0.7:
                    t0 = time.perf_counter()
                    r = c.get(f"/edits/{rng.choice(mine)}")
                    stats.record("GET /edits/{id}", r.status_code, time.perf_counter() - t0)
                else:
                    t0 = time.perf_counter()
                    r = c.get("/generate", params={"prompt": f"{rng.choice(SUBJECTS)} is", "max_new_tokens": 4})
                    stats.record("GET /generate", r.status_code, time.perf_counter() - t0)
            except httpx.HTTPError as e:
                with stats.lock:
                    stats.errors.append(f"{type(e).__name__}: {e}")


def monitor(url: str, stats: Stats, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=30) as c:
        while not stop.wait(0.5):
            try:
                m = re.search(r"^kedit_queue_depth (\S+)$", c.get("/metrics").text, re.M)
                if m:
                    stats.max_depth = max(stats.max_depth, int(float(m.group(1))))
            except httpx.HTTPError:
                pass


def spawn(
    pg_admin: str, redis_url: str, batch_size: int, model: str | None, pairs: list[str], keep: bool, workdir: Path
) -> tuple[str, str, list[subprocess.Popen], Callable[[], None]]:
    """A fresh database on the PostgreSQL of --pg-admin, a random Redis prefix, `kedit api` + `kedit worker`."""
    import psycopg

    name = f"kedit_soak_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin, autocommit=True, connect_timeout=5) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    db_url = f"{pg_admin.rsplit('/', 1)[0]}/{name}"
    prefix = f"kedit-soak-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "KEDIT_REDIS_PREFIX": prefix,
        "KEDIT_HOST": "127.0.0.1",
        "KEDIT_BATCH_SIZE": str(batch_size),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("KEDIT_FAULT", None)
    if model:
        env["KEDIT_MODEL_PATH"] = model
    env.update(env_pairs(pairs))
    procs = [
        spawn_kedit("api", "--port", str(port), env=env, log=workdir / "api.log"),
        spawn_kedit("worker", env=env, log=workdir / "worker.log"),
    ]

    def cleanup() -> None:
        stop_all(procs)
        if not keep:
            try:
                with psycopg.connect(pg_admin, autocommit=True, connect_timeout=5) as c:
                    c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                import redis

                r = redis.Redis.from_url(redis_url)
                for key in r.scan_iter(f"{prefix}:*"):
                    r.delete(key)
            except Exception as e:
                print(f"cleanup: {e}", file=sys.stderr)

    return f"http://127.0.0.1:{port}", db_url, procs, cleanup


def db_checks(db_url: str) -> tuple[list[str], LogState]:
    """The log's invariants (app/store/checks.py) and the log as read, for its head and batches."""
    from app.store.db import make_engine, session_factory, transaction

    # Plain postgresql:// would pick psycopg2, which is not installed; psycopg 3 is.
    if db_url.startswith("postgresql://"):
        db_url = "postgresql+psycopg://" + db_url[len("postgresql://") :]
    engine = make_engine(db_url)
    try:
        with transaction(session_factory(engine)) as session:
            state = read_log(session)
    finally:
        engine.dispose()
    return exactly_once_problems(state), state


def main(
    url: str | None = typer.Option(None, help="a running service on loopback"),
    spawn_: bool = typer.Option(False, "--spawn", help="start `kedit api` + `kedit worker` on a fresh database"),
    model: str | None = typer.Option(
        None, help="with --spawn: model folder or .gguf (default: the service default, SmolLM2)"
    ),
    env: list[str] = typer.Option([], help="with --spawn: extra KEY=VALUE for the service"),
    pg_admin: str = typer.Option("postgresql://postgres@127.0.0.1:5432/postgres", envvar="KEDIT_SOAK_PG"),
    redis: str = typer.Option("redis://127.0.0.1:6379/0", envvar="KEDIT_SOAK_REDIS"),
    database_url: str | None = typer.Option(
        None, help="with --url: the service's database, for the exactly-once check"
    ),
    batch_size: int = typer.Option(8, help="with --spawn: KEDIT_BATCH_SIZE"),
    clients: int = typer.Option(50, help=f"concurrent clients (≤ {MAX_CLIENTS})"),
    seconds: float = typer.Option(60, help=f"how long the clients run (≤ {MAX_SECONDS})"),
    drain_seconds: float = typer.Option(1800, help=f"then wait at most this for the backlog (≤ {MAX_DRAIN})"),
    ready_seconds: float = typer.Option(600, help="with --spawn: wait this long for the api"),
    seed: int = typer.Option(1),
    api_key: str | None = typer.Option(None, envvar="KEDIT_API_KEY"),
    keep: bool = typer.Option(False, "--keep", help="with --spawn: keep the database and Redis keys"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the figures to this file"),
) -> None:
    """Soak test of the kedit service: many concurrent clients, loopback only, bounded in time."""
    if not (0 < clients <= MAX_CLIENTS and 0 < seconds <= MAX_SECONDS and 0 < drain_seconds <= MAX_DRAIN):
        raise SystemExit("out of bounds: --clients, --seconds or --drain-seconds")
    if bool(url) == bool(spawn_):
        raise SystemExit("give exactly one of --url and --spawn")

    cleanup = lambda: None  # noqa: E731
    procs: list[subprocess.Popen] = []
    db_url = database_url
    workdir = Path(tempfile.mkdtemp(prefix="kedit-soak-"))
    if spawn_:
        url, db_url, procs, cleanup = spawn(pg_admin, redis, batch_size, model, env, keep, workdir)
        print(f"spawned api + worker at {url}; logs in {workdir}", flush=True)
    else:
        assert url is not None
        url = url.rstrip("/")
    if urlparse(url).hostname not in LOOPBACK and f"[{urlparse(url).hostname}]" not in LOOPBACK:
        raise SystemExit(f"refusing to load a non-loopback address: {url}")
    ok = True
    try:
        wait_ready(url, procs, ready_seconds)
        stats = Stats()
        stop = threading.Event()
        threads = [
            threading.Thread(target=client_loop, args=(url, stats, stop, seed * 1000 + i, api_key), daemon=True)
            for i in range(clients)
        ]
        mon = threading.Thread(target=monitor, args=(url, stats, stop), daemon=True)
        t0 = time.perf_counter()
        mon.start()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(timeout=180)
        elapsed = time.perf_counter() - t0
        stuck = sum(t.is_alive() for t in threads)

        # Drain: every accepted edit settles (bounded wait).
        drain0 = time.perf_counter()
        deadline = time.monotonic() + drain_seconds
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.monotonic() < deadline:
                counts = {
                    s: c.get("/edits", params={"status": s, "limit": 1}).json()["total"] for s in ("queued", "applying")
                }
                if not any(counts.values()):
                    break
                time.sleep(1)
            drained = time.perf_counter() - drain0
            rows = {}
            for eid in sorted(stats.accepted):
                r = c.get(f"/edits/{eid}")
                rows[eid] = r.json() if r.status_code == 200 else {"status": f"HTTP {r.status_code}"}
            c.get("/generate", params={"prompt": "x", "max_new_tokens": 1})  # catches up with the log first
            version = c.get("/version").json()
        mon.join(timeout=5)

        n5xx = sum(n for kind in stats.codes.values() for code, n in kind.items() if code >= 500)
        statuses = defaultdict(int)
        for e in rows.values():
            statuses[e["status"]] += 1
        bad_rows = [
            f"{eid}: {e['status']}"
            for eid, e in rows.items()
            if not (e["status"] == "applied" or (e["status"] == "failed" and e.get("error")))
        ]
        total = sum(len(v) for v in stats.latency.values())
        print(f"\n{clients} clients for {elapsed:.1f} s: {total} requests, {total / elapsed:.1f} req/s")
        print(f"{'request':18} {'count':>7} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8}  status codes")
        for kind in sorted(stats.latency):
            xs = stats.latency[kind]
            print(
                f"{kind:18} {len(xs):7d} {len(xs) / elapsed:7.1f} "
                f"{pct(xs, 0.5) * 1000:8.1f} {pct(xs, 0.95) * 1000:8.1f}  "
                f"{dict(sorted(stats.codes[kind].items()))}"
            )
        print(
            f"edits accepted: {len(stats.accepted)} ({len(stats.accepted) / elapsed:.1f}/s); settled in "
            f"{elapsed + drained:.1f} s after the start ({len(stats.accepted) / (elapsed + drained):.2f} applied/s); "
            f"final statuses {dict(statuses)}"
        )
        print(f"max queue depth seen: {stats.max_depth}; head version {version['head']}, served {version['version']}")
        print(
            f"5xx responses: {n5xx}; unanswered requests: {len(stats.errors)}; idempotent repeats: "
            f"{sum(1 for k in stats.keys)} keys, {len(stats.key_mismatch)} mismatches"
        )
        checks = {
            "no 5xx": n5xx == 0,
            "every request answered": not stats.errors and not stuck,
            "every accepted edit settled (applied, or failed with a reason)": not bad_rows,
            "idempotent repeats gave the same ids": not stats.key_mismatch,
        }
        figures = {
            "clients": clients,
            "seconds": elapsed,
            "requests": total,
            "req_per_s": total / elapsed,
            "latency_ms": {
                k: {"n": len(v), "p50": pct(v, 0.5) * 1000, "p95": pct(v, 0.95) * 1000}
                for k, v in stats.latency.items()
            },
            "accepted": len(stats.accepted),
            "statuses": dict(statuses),
            "max_queue_depth": stats.max_depth,
            "n5xx": n5xx,
            "drain_s": drained,
        }
        if db_url:
            problems, state = db_checks(db_url)
            sizes = [b["size"] for b in state["batches"] if b["kind"] == "edit"]
            mean_batch = statistics.mean(sizes) if sizes else 0
            checks["every edit applied exactly once (log)"] = not problems
            checks["api serves the log's head"] = not served_problems(
                state, version["version"], version["weights_hash"]
            )
            print(f"log: {len(sizes)} edit batches, mean size {mean_batch:.1f}; head {head_of(state)[0]}")
            for p in problems[:20]:
                print(f"  {p}")
            figures.update(batches=len(sizes), mean_batch=mean_batch)
        for e in stats.errors[:5] + bad_rows[:10]:
            print(f"  {e}")
        for name, passed in checks.items():
            print(f"{'PASS' if passed else 'FAIL'}: {name}")
        ok = all(checks.values())
        figures["checks"] = checks
        if json_out:
            Path(json_out).write_text(json.dumps(figures, indent=2))
    finally:
        cleanup()
    if not ok:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)

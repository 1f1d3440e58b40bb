"""Load test of the kedit service, on loopback only, bounded in edits and in time.

Submits CounterFact facts to POST /edits while a reader keeps calling /generate, and prints:
edits/s accepted, edits/s applied, and /generate latency p50/p95 measured while edits apply.

    # against a running service (must be on 127.0.0.1 / localhost / ::1):
    .venv/bin/python -m benchmarks.load --url http://127.0.0.1:8000 --edits 40
    # or let it start an embedded `kedit serve` on a free port with a throwaway database:
    .venv/bin/python -m benchmarks.load --spawn --edits 40 [--model PATH] [--env KEY=VALUE ...]
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import httpx
import typer

from benchmarks.procs import env_pairs, free_port, pct, spawn_kedit, stop, wait_ready

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
MAX_EDITS = 10_000
MAX_SECONDS = 3600


def facts(n: int) -> list[dict]:
    from app.config import KeditConfig

    data = KeditConfig().data_dir
    records = json.loads((data / "counterfact" / "counterfact.json").read_text())
    out = []
    for r in records[:n]:
        rw = r["requested_rewrite"]
        out.append(
            {
                "prompt": rw["prompt"],
                "subject": rw["subject"],
                "target_new": rw["target_new"]["str"],
                "target_true": rw["target_true"]["str"],
            }
        )
    if len(out) < n:
        raise SystemExit(f"only {len(out)} CounterFact records at {data}")
    return out


def spawn(model: str | None, pairs: list[str], workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "KEDIT_DATABASE_URL": f"sqlite:///{workdir / 'kedit.db'}", "KEDIT_HOST": "127.0.0.1"}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    if model:
        env["KEDIT_MODEL_PATH"] = model
    env.update(env_pairs(pairs))
    proc = spawn_kedit("serve", "--port", str(port), env=env, log=workdir / "serve.log")
    return proc, f"http://127.0.0.1:{port}"


def run(
    url: str,
    n: int,
    per_request: int,
    concurrency: int,
    max_seconds: float,
    api_key: str | None,
    proc: subprocess.Popen | None,
) -> dict:
    headers = {"X-API-Key": api_key} if api_key else {}
    client = httpx.Client(base_url=url, timeout=120, headers=headers)
    wait_ready(url, [proc] if proc else [], max_seconds)
    items = facts(n)
    chunks = [items[i : i + per_request] for i in range(0, n, per_request)]
    deadline = time.monotonic() + max_seconds
    latencies: list[float] = []
    stop = threading.Event()

    def reader() -> None:
        prompt = items[0]["prompt"].format(items[0]["subject"])
        while not stop.is_set() and time.monotonic() < deadline:
            t = time.perf_counter()
            r = client.get("/generate", params={"prompt": prompt, "max_new_tokens": 8})
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t)

    # Baseline before load, so the figures under load can be compared with it.
    idle = []
    for _ in range(5):
        t = time.perf_counter()
        client.get("/generate", params={"prompt": "The capital of France is", "max_new_tokens": 8})
        idle.append(time.perf_counter() - t)

    start_version = client.get("/version").json()["version"]
    t0 = time.perf_counter()
    ids: list[int] = []
    with ThreadPoolExecutor(concurrency) as pool:
        for resp in pool.map(lambda c: client.post("/edits", json=c), chunks):
            if resp.status_code != 202:
                raise SystemExit(f"POST /edits answered {resp.status_code}: {resp.text}")
            ids += resp.json()["ids"]
    accept_s = time.perf_counter() - t0
    read = threading.Thread(target=reader, daemon=True)
    read.start()

    pending = set(ids)
    statuses: dict[str, int] = {}
    while pending and time.monotonic() < deadline:
        page = client.get("/edits", params={"status": "queued", "limit": 1}).json()["total"]
        applying = client.get("/edits", params={"status": "applying", "limit": 1}).json()["total"]
        if page == 0 and applying == 0:
            break
        time.sleep(0.5)
    apply_s = time.perf_counter() - t0
    stop.set()
    read.join()
    for st in ("applied", "failed", "queued", "applying"):
        statuses[st] = client.get("/edits", params={"status": st, "limit": 1}).json()["total"]
    end_version = client.get("/version").json()["version"]
    done = statuses["applied"] + statuses["failed"]
    return {
        "edits": n,
        "requests": len(chunks),
        "accepted_per_s": n / accept_s,
        "applied_per_s": done / apply_s,
        "applied": statuses["applied"],
        "failed": statuses["failed"],
        "unfinished": statuses["queued"] + statuses["applying"],
        "versions": end_version - start_version,
        "seconds": apply_s,
        "generate_n": len(latencies),
        "generate_p50_ms": 1000 * pct(latencies, 0.5),
        "generate_p95_ms": 1000 * pct(latencies, 0.95),
        "generate_idle_p50_ms": 1000 * pct(idle, 0.5),
    }


def main(
    url: str | None = typer.Option(None, help="a running service on loopback"),
    spawn_: bool = typer.Option(False, "--spawn", help="start an embedded `kedit serve` with a throwaway database"),
    model: str | None = typer.Option(None, help="with --spawn: model folder (default: the service default)"),
    env: list[str] = typer.Option([], help="with --spawn: extra KEY=VALUE for the service"),
    edits: int = typer.Option(40, help=f"facts to submit (≤ {MAX_EDITS})"),
    per_request: int = typer.Option(1, help="facts per POST /edits"),
    concurrency: int = typer.Option(4, help="parallel POST /edits"),
    max_seconds: float = typer.Option(900, help=f"stop waiting after this (≤ {MAX_SECONDS})"),
    api_key: str | None = typer.Option(None, envvar="KEDIT_API_KEY"),
) -> None:
    if not 1 <= edits <= MAX_EDITS or not 0 < max_seconds <= MAX_SECONDS:
        raise SystemExit(f"--edits must be 1..{MAX_EDITS} and --max-seconds 0..{MAX_SECONDS}")
    if bool(url) == bool(spawn_):
        raise SystemExit("give exactly one of --url or --spawn")
    proc, tmp = None, None
    if url and urlparse(url).hostname not in LOOPBACK:
        raise SystemExit(f"{url} is not a loopback address: this script only loads a local service")
    if spawn_:
        tmp = tempfile.TemporaryDirectory(prefix="kedit-load-")
        proc, url = spawn(model, env, Path(tmp.name))
    assert url is not None
    try:
        res = run(url, edits, per_request, concurrency, max_seconds, api_key, proc)
    finally:
        if proc is not None:
            stop(proc, timeout=60)
        if tmp is not None:
            tmp.cleanup()
    print(f"edits submitted        {res['edits']} in {res['requests']} requests")
    print(f"edits/s accepted       {res['accepted_per_s']:.1f}")
    print(
        f"edits/s applied        {res['applied_per_s']:.3f}  ({res['applied']} applied, {res['failed']} failed, "
        f"{res['unfinished']} unfinished, {res['versions']} versions, {res['seconds']:.1f} s)"
    )
    print(
        f"generate p50 / p95     {res['generate_p50_ms']:.0f} / {res['generate_p95_ms']:.0f} ms while applying "
        f"(n={res['generate_n']}; idle p50 {res['generate_idle_p50_ms']:.0f} ms)"
    )


if __name__ == "__main__":
    typer.run(main)

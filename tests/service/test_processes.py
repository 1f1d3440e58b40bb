"""Real processes: two `kedit api` replicas and one `kedit worker`, over PostgreSQL and Redis."""

from __future__ import annotations

import signal
import subprocess

import httpx
import pytest

from benchmarks.procs import free_port, is_ready, spawn_kedit, stop_all
from tests.utils.faults import REDIS, service_env
from tests.utils.service import FACTS, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def spawn(tiny_assets, pg_url, redis_prefix, tmp_path):
    database_url = pg_url.replace("+psycopg", "")
    env = service_env(tiny_assets, database_url, REDIS, redis_prefix, KEDIT_STANDBY_POLL_S="0.5")
    started: list[subprocess.Popen] = []

    def start(role: str, *args: str) -> subprocess.Popen:
        p = spawn_kedit(role, *args, env=env, log=tmp_path / f"proc{len(started)}.log")
        started.append(p)
        return p

    yield start
    stop_all(started)


def ready(url: str, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"process exited with {proc.returncode}")
    return is_ready(url, timeout=2)


def test_two_api_processes_and_a_worker(spawn):
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    apis = [spawn("api", "--port", str(p)) for p in ports]
    spawn("worker")
    for url, proc in zip(urls, apis, strict=True):
        wait_for(lambda url=url, proc=proc: ready(url, proc), 180, f"{url} to be ready")

    eid = httpx.post(f"{urls[0]}/edits", json=FACTS[0]).json()["ids"][0]
    wait_for(lambda: httpx.get(f"{urls[1]}/edits/{eid}").json()["status"] == "applied", 180, "the edit to apply")
    for url in urls:
        wait_for(lambda url=url: httpx.get(f"{url}/version").json()["version"] == 1, 60, f"{url} to reach version 1")
    versions = [httpx.get(f"{url}/version").json() for url in urls]
    assert versions[0]["weights_hash"] == versions[1]["weights_hash"] != versions[0]["base_hash"]
    params = {"prompt": "The mother tongue of Danielle Darrieux is", "max_new_tokens": 4}
    texts = [httpx.get(f"{url}/generate", params=params).json() for url in urls]
    assert texts[0]["text"] == texts[1]["text"] and texts[0]["version"] == texts[1]["version"] == 1

    # Restart one replica: it rebuilds the same weights from the log.
    apis[1].send_signal(signal.SIGTERM)
    apis[1].wait(timeout=30)
    again = spawn("api", "--port", str(ports[1]))
    wait_for(lambda: ready(urls[1], again), 180, "the restarted api to be ready")
    v = httpx.get(f"{urls[1]}/version").json()
    assert (v["version"], v["weights_hash"]) == (1, versions[0]["weights_hash"])
    assert httpx.get(f"{urls[1]}/generate", params=params).json()["text"] == texts[0]["text"]


def test_killed_worker_loses_nothing_and_applies_nothing_twice(spawn, pg_url):
    """SIGKILL the worker while it works through a backlog; a new worker finishes it. Every
    accepted edit ends applied exactly once, and the log still replays to its stored hash."""
    from sqlalchemy import create_engine, text

    port, mport = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    api_proc = spawn("api", "--port", str(port))
    first = spawn("worker", "--metrics-port", str(mport))
    wait_for(lambda: ready(url, api_proc), 180, "the api to be ready")
    ids = []
    for i in range(6):  # six requests: several small batches, so the kill lands mid-backlog
        ids += httpx.post(f"{url}/edits", json=FACTS[i % len(FACTS)]).json()["ids"]
    wait_for(
        lambda: httpx.get(f"{url}/edits", params={"status": "applied"}).json()["total"] >= 1, 180, "the first batch"
    )
    metrics = httpx.get(f"http://127.0.0.1:{mport}/metrics").text
    assert "kedit_worker_edits_total" in metrics
    first.kill()  # no cleanup, no XACK, maybe mid-batch
    first.wait(timeout=30)
    spawn("worker")
    wait_for(
        lambda: httpx.get(f"{url}/edits", params={"status": "applied"}).json()["total"] == len(ids),
        300,
        "every edit to be applied",
    )

    engine = create_engine(pg_url)
    with engine.connect() as c:
        applied_in = c.execute(text("SELECT sum(size) FROM batches WHERE kind = 'edit'")).scalar()
        versions = c.execute(text("SELECT count(*) FROM versions")).scalar()
        per_edit = c.execute(text("SELECT count(DISTINCT applied_version) FROM edits")).scalar()
        head_hash = c.execute(text("SELECT weights_hash FROM versions ORDER BY id DESC LIMIT 1")).scalar()
    engine.dispose()
    assert applied_in == len(ids)  # no edit went into two batches
    assert per_edit == versions  # every version applied some of these edits
    head = httpx.get(f"{url}/version").json()
    assert head["head"] == versions
    # A fresh process rebuilds the same weights from the log.
    again_port = free_port()
    again = spawn("api", "--port", str(again_port))
    wait_for(lambda: ready(f"http://127.0.0.1:{again_port}", again), 180, "a fresh api")
    v = httpx.get(f"http://127.0.0.1:{again_port}/version").json()
    assert (v["version"], v["weights_hash"]) == (versions, head_hash)

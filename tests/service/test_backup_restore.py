"""Backup and restore of the edit log with the real pg_dump / pg_restore (docs/service.md,
"Backup and restore"): a log with applied and reverted edits is dumped, restored into a fresh
database, and an api started on the restore serves the same head version, the same weights hash
and the same answers."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from tests.utils.service import FACTS, wait_for, wait_status

pytestmark = pytest.mark.integration

PROMPTS = ["The mother tongue of Danielle Darrieux is", "Paris is the capital of", "Lionel Messi plays"]


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install the PostgreSQL client binaries (postgresql-client)")
    return path


def _snapshot(c: TestClient) -> dict:
    version = c.get("/version").json()
    edits = c.get("/edits", params={"limit": 50}).json()["items"]
    answers = [c.get("/generate", params={"prompt": p, "max_new_tokens": 4}).json()["text"] for p in PROMPTS]
    return {
        "version": version["version"],
        "head": version["head"],
        "hash": version["weights_hash"],
        "edits": [(e["id"], e["status"], e["version"], e["batch_id"]) for e in edits],
        "answers": answers,
    }


def test_dump_restore_and_serve_the_same_weights(prod_config, pg_url, pg_server, tmp_path):
    cfg = prod_config(redis_url=None)  # the worker in-process: nothing in Redis matters to a backup
    with TestClient(create_app(cfg)) as c:
        ids = c.post("/edits", json=FACTS[:3]).json()["ids"]
        for eid in ids:
            wait_status(c, eid)
        assert c.post(f"/edits/{ids[1]}/revert").status_code == 202
        wait_status(c, ids[1], ("reverted",))
        r = c.post("/edits", json=FACTS[3], headers={"Idempotency-Key": "before-backup"})
        wait_status(c, r.json()["ids"][0])
        wait_for(lambda: c.get("/version").json()["version"] == c.get("/version").json()["head"], 60, "catch-up")
        before = _snapshot(c)
    assert before["version"] >= 3 and ("reverted" in {e[1] for e in before["edits"]})

    dump = tmp_path / "kedit.dump"
    subprocess.run(
        [_tool("pg_dump"), "--format=custom", "--no-owner", f"--file={dump}", _libpq(pg_url)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    restored = f"kedit_restore_{uuid.uuid4().hex[:10]}"
    pg_server.execute(f'CREATE DATABASE "{restored}"')
    try:
        url = pg_url.rsplit("/", 1)[0] + "/" + restored
        subprocess.run(
            [_tool("pg_restore"), "--no-owner", "--exit-on-error", f"--dbname={_libpq(url)}", str(dump)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        with TestClient(create_app(prod_config(redis_url=None, database_url=url))) as c:
            after = _snapshot(c)
            assert after == before
            # The restored log goes on: the idempotency record came along, and new edits apply.
            again = c.post("/edits", json=FACTS[3], headers={"Idempotency-Key": "before-backup"})
            assert again.headers["Idempotent-Replayed"] == "true"
            e = wait_status(c, c.post("/edits", json={**FACTS[0], "subject": "Rome"}).json()["ids"][0])
            assert e["status"] == "applied" and e["version"] == before["head"] + 1
    finally:
        pg_server.execute(f'DROP DATABASE IF EXISTS "{restored}" WITH (FORCE)')

"""benchmarks/soak.py with reduced counts (issue 5): concurrent clients mixing POST /edits,
GET /edits/{id} and /generate against a real `kedit api` + `kedit worker` (tiny model, fresh
PostgreSQL database, random Redis prefix). The script's own checks decide: 0 5xx, every request
answered, every accepted edit settled, applied exactly once per the log, idempotent repeats
consistent, the api serving the log's head. The full run (50 clients, 60 s) is the same script
with its defaults; KEDIT_LONG=1 runs it here."""

from __future__ import annotations

import json

import pytest

from benchmarks.procs import run_module
from tests.utils import faults as sup

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def test_soak_no_5xx_and_every_edit_applied_exactly_once(warm_cache, tmp_path):
    model_dir, corpus, cache = warm_cache
    clients, seconds = (50, 60) if sup.LONG else (8, 8)
    out = tmp_path / "soak.json"
    args = [
        "--spawn",
        "--model",
        str(model_dir),
        "--env",
        f"KEDIT_CACHE_DIR={cache}",
        "--env",
        f"KEDIT_STATS_CORPUS={corpus}",
        "--env",
        f"KEDIT_EDIT_OVERRIDES={json.dumps(sup.TINY_OVERRIDES)}",
        "--env",
        "KEDIT_BATCH_WAIT_MS=50",
        "--batch-size",
        "16",
        "--clients",
        str(clients),
        "--seconds",
        str(seconds),
        "--drain-seconds",
        "900",
        "--pg-admin",
        sup.PG_ADMIN,
        "--redis",
        sup.REDIS,
        "--json",
        str(out),
    ]
    r = run_module("benchmarks.soak", *args, timeout=1800)
    print(r.stdout[-3000:])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert figures["n5xx"] == 0 and all(figures["checks"].values())
    assert figures["accepted"] > 0 and figures["statuses"].get("applied", 0) > 0
    assert set(figures["latency_ms"]) == {"POST /edits", "GET /edits/{id}", "GET /generate"}

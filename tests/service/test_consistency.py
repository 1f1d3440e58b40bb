"""Readers never see a version half-applied: every /generate answer names a version and the
weights hash that the log recorded for exactly that version, while edits and reverts land."""

from __future__ import annotations

import threading

from app.store.models import Version
from tests.utils.service import FACTS, wait_status


def test_generate_answers_match_a_logged_version(client):
    ctx = client.app.state.ctx
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            r = client.get("/generate", params={"prompt": "Paris is", "max_new_tokens": 1}).json()
            seen.append((r["version"], r["weights_hash"]))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        ids = []
        for fact in FACTS:
            ids += client.post("/edits", json=fact).json()["ids"]
        for i in ids:
            wait_status(client, i)
        for i in ids[:2]:
            client.post(f"/edits/{i}/revert")
        for i in ids[:2]:
            wait_status(client, i, ("reverted",))
    finally:
        stop.set()
        for t in readers:
            t.join()
    final = client.get("/generate", params={"prompt": "Paris is", "max_new_tokens": 1}).json()
    seen.append((final["version"], final["weights_hash"]))
    with ctx.sessions() as s:
        logged = {v.id: v.weights_hash for v in s.query(Version)}
    logged[0] = ctx.host.base_hash
    assert len({v for v, _ in seen}) >= 2, "the readers should have seen several versions"
    for version, weights_hash in seen:
        assert logged[version] == weights_hash, f"version {version} answered with weights not in the log"

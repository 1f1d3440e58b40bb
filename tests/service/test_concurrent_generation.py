"""Concurrent generation: requests share forward passes (transformers' continuous batching), and
every answer comes from exactly one weights version, also while the worker publishes new ones."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from app.config import ServiceConfig
from app.editing.reading import generate
from app.service.context import ServiceContext
from app.service.generation import Sampling, fingerprint
from tests.utils.service import FACTS, TINY_PROMPTS, KeditServer, tiny_server_env, wait_for

PROMPTS = TINY_PROMPTS


def test_concurrent_requests_share_forward_passes(client):
    engine = client.app.state.ctx.generation
    tok = engine.lm.tokenizer
    n, tokens = 8, 16
    # Greedy, and no end-of-sequence token, so that each request runs its full length.
    engine.eos_ids = []
    passes = []
    hook = engine.lm.model.register_forward_hook(lambda *_: passes.append(1))
    try:
        gens = [
            engine.open(tok(PROMPTS[i % len(PROMPTS)])["input_ids"], Sampling(max_tokens=tokens, temperature=0))
            for i in range(n)
        ]
        texts = [g.text() for g in gens]
    finally:
        hook.remove()
    steps = len(passes)
    assert all(g.completion_tokens == tokens for g in gens)
    # One at a time this is n × tokens forward passes; batched, most decode steps serve every request.
    assert steps < n * tokens / 2, steps
    # ... and each text is what the request gives alone.
    for i, text in enumerate(texts):
        alone = engine.open(tok(PROMPTS[i % len(PROMPTS)])["input_ids"], Sampling(max_tokens=tokens, temperature=0))
        assert alone.text() == text


def test_many_streams_while_the_worker_publishes_versions(tiny_assets, tmp_path):
    """12 clients stream greedy chats and completions while 4 edits and a revert become 5 versions.
    Every answer names one version; its text is what that version's weights produce alone (a fresh
    replay of the log to that version, one plain model.generate); no answer is a 5xx."""
    model_dir, corpus, cache = tiny_assets
    db = tmp_path / "kedit.db"
    srv = KeditServer(tiny_server_env(model_dir, corpus, cache, db, KEDIT_BATCH_SIZE="1"), tmp_path / "serve.log")
    srv.wait_ready()
    results: list[tuple[str, str, str]] = []  # (fingerprint, prompt, text)
    statuses: list[int] = []
    done = threading.Event()
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(base_url=srv.url, timeout=120) as h:
            model = h.get("/v1/models").json()["data"][0]["id"]
            k = 0
            while not done.is_set() or k < 2:
                prompt = PROMPTS[(i + k) % len(PROMPTS)]
                chat = (i + k) % 2 == 0
                body = {"model": model, "max_tokens": 10, "temperature": 0, "stream": True}
                body.update({"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt})
                with h.stream("POST", "/v1/chat/completions" if chat else "/v1/completions", json=body) as r:
                    with lock:
                        statuses.append(r.status_code)
                    if r.status_code != 200:
                        continue
                    header = r.headers["x-system-fingerprint"]
                    chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
                fps = {c["system_fingerprint"] for c in chunks}
                assert fps == {header}, (fps, header)
                text = "".join(
                    (c["choices"][0]["delta"].get("content") or "") if chat else c["choices"][0]["text"]
                    for c in chunks
                    if c["choices"]
                )
                with lock:
                    results.append((header, prompt, text))
                k += 1

    try:
        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(client, i) for i in range(12)]
            with httpx.Client(base_url=srv.url, timeout=60) as h:
                ids = [h.post("/edits", json=f).json()["ids"][0] for f in FACTS]
                wait_for(
                    lambda: all(h.get(f"/edits/{i}").json()["status"] in ("applied", "failed") for i in ids),
                    300,
                    "the edits",
                )
                h.post(f"/edits/{ids[0]}/revert")
                wait_for(lambda: h.get(f"/edits/{ids[0]}").json()["status"] == "reverted", 300, "the revert")
                head = h.get("/version").json()["head"]
            done.set()
            for f in futures:
                f.result()
    finally:
        done.set()
        srv.stop()

    assert statuses and all(s == 200 for s in statuses), sorted(set(statuses))
    seen = {fp for fp, _, _ in results}
    assert len(seen) >= 3, f"the clients should have met several versions, saw {seen}"

    # What each version produces alone: the log replayed to it in a fresh process context.
    cfg = ServiceConfig(**tiny_server_env_config(model_dir, corpus, cache, db))
    ctx = ServiceContext.open(cfg)
    try:
        host = ctx.host_replica()
        expected: dict[tuple[str, str], str] = {}
        for v in range(head + 1):
            host.replay(at_version=v)
            fp = fingerprint(v, host.weights_hash)
            if fp in seen:
                for p in PROMPTS:
                    expected[fp, p] = generate(host.editor.lm, p, 10)
    finally:
        ctx.close()
    assert seen <= {fp for fp, _ in expected}, "every fingerprint names a version of the log"
    wrong = [(fp, p, t, expected[fp, p]) for fp, p, t in results if t != expected[fp, p]]
    assert not wrong, wrong[:3]


def tiny_server_env_config(model_dir, corpus, cache, db) -> dict:
    from tests.utils.service import TINY_OVERRIDES

    return dict(
        model_path=str(model_dir),
        stats_corpus=corpus,
        cache_dir=cache,
        database_url=f"sqlite:///{db}",
        edit_overrides=dict(TINY_OVERRIDES),
    )

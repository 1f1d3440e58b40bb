"""Generations are bounded and never starve the probes (app/api/pools.py, the engine's Turns).

The generations are held in flight for as long as the test needs by holding the weights (the
host's write side, as a version switch does): each admitted request then keeps its turn, and
/health, /ready and /metrics must still answer. Every wait here is bounded against a hang; none
is a timing assertion.
"""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.service.errors import Busy
from app.service.generation import Turns
from tests.utils.service import wait_for

TURNS, QUEUE = 2, 3


@pytest.fixture
def bounded(make_config):
    cfg = make_config(generation_concurrency=TURNS, generation_queue=QUEUE, generation_queue_timeout_s=300)
    with TestClient(create_app(cfg)) as c:
        yield c


def _in_thread(fn):
    """Run fn in a thread; returns (thread, box) where box holds its result once done."""
    box: list = []
    t = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    t.start()
    return t, box


def _answer(fn, what: str, timeout: float = 60):
    t, box = _in_thread(fn)
    t.join(timeout)
    assert box, f"{what} did not answer while the generations were in flight"
    return box[0]


def test_probes_answer_while_every_turn_and_queue_place_is_taken_and_the_next_is_429(bounded):
    c = bounded
    ctx = c.app.state.ctx
    turns = ctx.generation.turns
    model = c.get("/v1/models").json()["data"][0]["id"]
    sampled = {"model": model, "prompt": "Paris " * 20, "max_tokens": 16, "temperature": 1.0}
    with ctx.host.writing():  # the weights are held: admitted generations wait with their turn
        flood = [_in_thread(lambda: c.post("/v1/completions", json=sampled)) for _ in range(TURNS + QUEUE)]
        wait_for(lambda: turns.load() == (TURNS, QUEUE), 60, f"{TURNS} generations running and {QUEUE} queued")
        for path in ("/health", "/ready", "/metrics"):
            r = _answer(lambda p=path: c.get(p), path)
            assert r.status_code == 200, (path, r.text)
        assert turns.load() == (TURNS, QUEUE)  # answered while all of them were still in flight
        # One more is refused at once, in the shape its client reads, with when to come back.
        r = _answer(lambda: c.post("/v1/completions", json=sampled), "the request over the bound")
        assert r.status_code == 429, r.text
        assert int(r.headers["Retry-After"]) >= 1
        err = r.json()["error"]
        assert err["type"] == "rate_limit_error" and "KEDIT_GENERATION_QUEUE" in err["message"], err
        r = _answer(lambda: c.get("/generate", params={"prompt": "Paris is", "max_new_tokens": 2}), "/generate")
        assert r.status_code == 429 and "Retry-After" in r.headers and "busy" in r.json()["detail"], r.text
        # The rest of the API is not behind the generations either.
        assert _answer(lambda: c.get("/edits"), "/edits").status_code == 200
    for t, box in flood:
        t.join(120)
        assert box and box[0].status_code == 200, box and box[0].text
    assert turns.load() == (0, 0)


def test_a_stream_holds_its_turn_until_its_last_token_and_gives_it_back(bounded):
    c = bounded
    model = c.get("/v1/models").json()["data"][0]["id"]
    body = {"model": model, "prompt": "Paris is", "max_tokens": 8, "stream": True}
    with c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert c.app.state.ctx.generation.turns.load() == (0, 0)


def test_turns_queue_then_refuse():
    turns = Turns(running=1, waiting=1, wait_s=0.2)
    turns.take()
    # The one queue place: taken, and refused when no turn comes free within wait_s.
    with pytest.raises(Busy, match="no generation turn came free within 0.2 s"):
        turns.take()
    turns.wait_s = 120
    blocker, box = _in_thread(lambda: _busy_or_turn(turns))
    wait_for(lambda: turns.load() == (1, 1), 30, "a request waiting for a turn")
    with pytest.raises(Busy, match="1 generations running and 1 waiting") as refused:
        turns.take()  # the queue is full: refused at once
    assert refused.value.retry_after >= 1 and refused.value.status_code == 429
    turns.give_back()
    blocker.join(30)
    assert box == ["turn"]  # the waiter got the freed turn
    turns.give_back()
    assert turns.load() == (0, 0)


def _busy_or_turn(turns: Turns) -> str:
    try:
        turns.take()
    except Busy:
        return "busy"
    return "turn"

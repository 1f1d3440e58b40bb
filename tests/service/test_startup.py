"""The start-up's account of itself (app/service/startup.py): stage lines with an expected
duration, progress lines, the state /ready shows. A hand-driven clock, no waiting."""

from __future__ import annotations

import logging

import pytest

from app.editing.progress import Cancelled
from app.service.startup import HEARTBEAT_S, Startup, duration


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def startup(clock):
    s = Startup("2 cores", clock=clock)
    yield s
    s.stop.set()  # ends the ticker thread


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kedit.startup"]


@pytest.mark.parametrize(
    "seconds, text",
    [(0.4, "0 s"), (45, "45 s"), (190, "3 min 10 s"), (180, "3 min"), (1500, "25 min"), (3900, "1 h 5 min")],
)
def test_durations_read_as_a_person_says_them(seconds, text):
    assert duration(seconds) == text


def test_a_counted_stage_estimates_its_duration_from_the_first_chunk(startup, clock, caplog):
    caplog.set_level(logging.INFO, logger="kedit.startup")
    startup.for_part("worker")
    startup.begin("building C0", "layers [1, 2] from 150,000 tokens", total=150_000, unit="tokens")
    assert lines(caplog) == ["start-up (worker): building C0: layers [1, 2] from 150,000 tokens"]
    clock.t += 2.0
    startup.advance(2_000)  # 1,000 tokens/s: 150 s for the whole stage
    assert lines(caplog)[-1] == (
        "start-up (worker): building C0 1 % (2,000 of 150,000 tokens), 2 s in, about 2 min 30 s at 1,000 tokens/s "
        "on 2 cores"
    )
    clock.t += 59.0
    startup.advance(61_000)
    state = startup.snapshot()
    assert state["stage"] == "building C0" and state["part"] == "worker"
    assert state["progress"] == pytest.approx(61 / 150, abs=1e-3) and state["detail"] == "61,000 of 150,000 tokens"
    assert state["seconds_left"] == pytest.approx(150 * (1 - 61 / 150), abs=0.1)
    assert startup.running and not startup.serving
    # Progress lines come when HEARTBEAT_S has passed since the last line, not on every chunk.
    assert "41 % (61,000 of 150,000 tokens), 1 min 1 s in, about 1 min 29 s left" in lines(caplog)[-1]
    n = len(lines(caplog))
    clock.t += HEARTBEAT_S / 2
    startup.advance(62_000)
    assert len(lines(caplog)) == n


def test_a_stage_without_chunks_says_its_expected_duration_and_is_still_heard_from(startup, clock, caplog):
    caplog.set_level(logging.INFO, logger="kedit.startup")
    startup.begin("converting the model", "x.gguf to safetensors (once)", expected_s=33)
    assert lines(caplog) == ["start-up: converting the model: x.gguf to safetensors (once) (about 33 s on 2 cores)"]
    clock.t += 12
    startup._log_line()  # what the ticker thread writes once HEARTBEAT_S passed in silence
    assert lines(caplog)[-1] == "start-up: converting the model 12 s in, about 21 s left"
    clock.t += 30
    startup._log_line()
    assert lines(caplog)[-1].endswith("taking longer than expected")
    assert startup.snapshot()["progress"] is None and startup.snapshot()["seconds_left"] == 0


def test_ready_failed_and_stopped(startup, clock, caplog):
    caplog.set_level(logging.INFO, logger="kedit.startup")
    startup.begin("loading the model", "m on cpu", expected_s=1)
    startup.check()  # not asked to stop: nothing happens
    clock.t += 75
    startup.ready("version 3 (api with worker)")
    assert lines(caplog)[-1] == "start-up done in 1 min 15 s: ready, version 3 (api with worker)"
    assert startup.serving and not startup.running and startup.snapshot()["stage"] == "ready"

    failing = Startup(clock=clock)
    failing.begin("replaying the log", "4 live batches", total=4, unit="batches")
    failing.fail(RuntimeError("weights after replaying to version 4 hash to 0f, the log says 9a"))
    state = failing.snapshot()
    assert state["stage"] == "failed" and "the log says 9a" in state["error"] and not failing.running
    assert "start-up failed: weights after replaying" in lines(caplog)[-1]

    stopped = Startup(clock=clock)
    stopped.begin("building C0", total=10, unit="tokens")
    stopped.stopping()
    assert stopped.snapshot()["stage"] == "stopping" and stopped.stopped()
    with pytest.raises(Cancelled):
        stopped.check()

"""benchmarks/procs.py, the process helpers of the benchmarks and the tests, on real processes."""

from __future__ import annotations

import math
import signal
import socket
import subprocess
import sys

import pytest

from benchmarks.procs import env_pairs, free_port, is_ready, pct, stop, stop_all, wait_ready


def test_percentiles_by_nearest_rank():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert (pct(xs, 0), pct(xs, 0.5), pct(xs, 0.95), pct(xs, 1)) == (1.0, 3.0, 5.0, 5.0)
    assert math.isnan(pct([], 0.5))


def test_env_pairs_keep_the_value_whole_and_the_last_key():
    assert env_pairs(["A=1", "B=x=y", "A=2", "C="]) == {"A": "2", "B": "x=y", "C": ""}


def test_a_free_port_can_be_bound_and_nothing_answers_there():
    port = free_port()
    assert not is_ready(f"http://127.0.0.1:{port}", timeout=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_wait_ready_stops_at_once_when_the_process_exits():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"])
    proc.wait(timeout=60)
    with pytest.raises(AssertionError, match="exited with 7: the log said no"):
        wait_ready(
            f"http://127.0.0.1:{free_port()}", [proc], 60, error=AssertionError, describe=lambda p: "the log said no"
        )
    with pytest.raises(SystemExit, match="not ready after 0 s"):
        wait_ready(f"http://127.0.0.1:{free_port()}", [], 0, poll=0.01)


def test_stop_terminates_and_stop_all_ends_every_process():
    sleepers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]) for _ in range(2)]
    assert stop(sleepers[0]) == -signal.SIGTERM
    stop_all(sleepers)
    assert all(p.poll() is not None for p in sleepers)

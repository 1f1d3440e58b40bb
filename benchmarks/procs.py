"""Real kedit processes on loopback, and the percentiles of what they measured: one definition for
the benchmarks and the tests (tests/utils/service.py and tests/utils/faults.py import it).

It lives in benchmarks/ rather than app/ because it drives kedit from outside, as an operator's
shell would (`python -m app.cli ROLE` in a child process, polling /ready), which is no part of the
service; and rather than tests/ because the benchmarks run without pytest. It needs only the
standard library and httpx, so that importing it pulls in none of kedit's own modules.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of xs by nearest rank; NaN for no samples."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def spawn_kedit(
    role: str,
    *args: str,
    env: Mapping[str, str],
    log: Path,
    log_level: str = "warning",
    cwd: Path | None = None,
) -> subprocess.Popen:
    """`kedit ROLE ARGS… --log-level LEVEL` of this checkout in a child process, its output in `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", role, *args, "--log-level", log_level],
            cwd=cwd or REPO,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def run_module(module: str, *args: str, timeout: float, env: Mapping[str, str] | None = None):
    """`python -m MODULE ARGS…` of this checkout to its end, from the repository root, its output
    captured as text (a CompletedProcess)."""
    full = dict(os.environ if env is None else env)
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO, env=full, timeout=timeout
    )


def is_ready(url: str, timeout: float = 5, accept: Callable[[dict], bool] | None = None) -> bool:
    """GET /ready answers 200 (and, given `accept`, its body passes it); False while nothing listens."""
    try:
        r = httpx.get(f"{url}/ready", timeout=timeout)
    except httpx.TransportError:
        return False
    return r.status_code == 200 and (accept is None or accept(r.json()))


def wait_ready(
    url: str,
    procs: Iterable[subprocess.Popen] = (),
    timeout: float = 180,
    *,
    poll: float = 0.5,
    accept: Callable[[dict], bool] | None = None,
    error: type[BaseException] = SystemExit,
    describe: Callable[[subprocess.Popen], str] = lambda p: "see its log",
) -> None:
    """Until `url` is ready; raises `error` at once if one of `procs` exits (with `describe(proc)`
    in the message), or after `timeout` s. Benchmarks keep SystemExit (one line, exit 1); tests pass
    AssertionError."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            if p.poll() is not None:
                raise error(f"a kedit process exited with {p.returncode}: {describe(p)}")
        if is_ready(url, accept=accept):
            return
        if time.monotonic() > deadline:
            raise error(f"{url} not ready after {timeout:.0f} s")
        time.sleep(poll)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Send `sig` (default SIGTERM, a clean shutdown), then SIGKILL if it has not ended within
    `timeout`; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=30)


def stop_all(procs: Iterable[subprocess.Popen], timeout: float = 30) -> None:
    """SIGTERM to every process first, so that they shut down side by side, then `stop` each."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        stop(p, timeout=timeout)


def env_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """KEY=VALUE strings (a benchmark's repeatable --env option) as a mapping; a later KEY wins."""
    return dict(pair.partition("=")[::2] for pair in pairs)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any KEDIT_* setting or service URL, plus `extra`: a child
    kedit configured by what the caller gives and nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEDIT_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(extra)
    return env

"""Fault injection for the crash tests (tests/faults). Inert unless KEDIT_FAULT is set.

    KEDIT_FAULT=<point>:<action>[@<n>][,<point>:<action>[@<n>]...]

<point> names a place in the code that calls `faults.point("<point>")`:

    worker_claimed        edits were marked `applying`; the editor is about to run
    worker_revert_before_commit  a revert's new weights are computed; nothing is committed
    worker_guard_scored   a batch is written into the worker's weights and its canaries scored
    worker_guard_bisect   the guard (policy reject) is writing one group of the batch on trial
    worker_after_commit   the batch (or revert) is committed; nothing is acked yet
    worker_shown_checked  after the commit: the shown check has its answers; nothing of it is recorded yet
    worker_after_ack      XACK done; the version is not announced yet ("during publish")
    worker_before_snapshots  a commit is acked and announced; the snapshots a revert made stale
                          are not deleted yet (also at a worker's start, before its clean-up)
    api_before_commit     POST /edits: rows inserted, transaction not yet committed
    api_after_commit      POST /edits: rows committed, nothing queued, nothing answered
    api_after_queue       POST /edits: queued (XADD), nothing answered

<action>:
    kill                  SIGKILL this process at once (what `kill -9` does: no cleanup at all)
    kill_after=<ms>       arm a timer: SIGKILL this process <ms> milliseconds later, whatever it is
                          doing then (e.g. `worker_claimed:kill_after=40`: in the middle of the
                          target optimisation)
    raise                 raise FaultInjected here (a software failure rather than a crash)

@<n> fires on the n-th time the point is reached in this process (default 1); the point does
nothing on every other pass. Production never sets KEDIT_FAULT: `point()` is then one dict
lookup on an empty dict.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

ENV = "KEDIT_FAULT"


class FaultInjected(RuntimeError):
    """Raised by the `raise` action."""


def _parse(spec: str) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, action = part.partition(":")
        nth = 1
        if "@" in action:
            action, _, n = action.rpartition("@")
            nth = int(n)
        if not name or not action:
            raise ValueError(f"{ENV}: cannot read {part!r}; write <point>:<action>[@<n>]")
        out[name] = (action, nth)
    return out


_PLAN: dict[str, tuple[str, int]] = _parse(os.environ.get(ENV, ""))
_HITS: dict[str, int] = {}
_MUTEX = threading.Lock()


def configure(spec: str | None) -> None:
    """Replace the plan (tests that run the app in-process)."""
    global _PLAN
    with _MUTEX:
        _PLAN = _parse(spec or "")
        _HITS.clear()


def _kill() -> None:
    log.warning("fault injection: SIGKILL pid %d", os.getpid())
    for h in logging.getLogger().handlers:  # so the test's log shows where it died
        try:
            h.flush()
        except Exception:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def point(name: str) -> None:
    """A place where a test may make this process crash or fail."""
    if not _PLAN:
        return
    planned = _PLAN.get(name)
    if planned is None:
        return
    action, nth = planned
    with _MUTEX:
        _HITS[name] = _HITS.get(name, 0) + 1
        if _HITS[name] != nth:
            return
    log.warning("fault injection: %s reached (pass %d): %s", name, nth, action)
    if action == "kill":
        _kill()
    elif action.startswith("kill_after="):
        delay = int(action.split("=", 1)[1]) / 1000
        t = threading.Timer(delay, _kill)
        t.daemon = True
        t.start()
    elif action == "raise":
        raise FaultInjected(f"fault injected at {name}")
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} at {name}")

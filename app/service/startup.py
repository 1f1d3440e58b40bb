"""A process's start-up, told as it happens: to the log (a line per stage with its expected
duration, a progress line at least every HEARTBEAT_S seconds) and to /ready (the stage, its
progress, what is left). It is the Monitor the editing core and the replay report to, and it
stops them at their next chunk of work once the process is asked to stop.

Stages, in the order a `kedit serve` on a fresh cache meets them (each copy of the model, the
api's and the worker's, goes through its own): converting the model, loading the model,
replaying the log, sampling text for C0, building C0, preparing the editor, then ready; the
worker scores its canaries after that ("scoring canaries"), while the api already serves.
"""

from __future__ import annotations

import logging
import threading
import time

from app.editing.progress import Monitor

log = logging.getLogger("kedit.startup")

HEARTBEAT_S = 10.0  # a progress line at least this often while a stage runs
STARTING, READY, FAILED, STOPPING = "starting", "ready", "failed", "stopping"


def duration(seconds: float) -> str:
    """A duration as a person reads it: '45 s', '3 min 10 s', '1 h 5 min'."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s" if whole < 600 and whole % 60 else f"{round(whole / 60)} min"
    return f"{whole // 3600} h {round(whole % 3600 / 60)} min"


class Startup(Monitor):
    """The state of one process's start-up; thread-safe (the start-up thread writes it, requests read it).

    `where`: the hardware the estimates hold for, e.g. "2 cores" (said in the log's estimates).
    `stop`: set when the process is asked to stop; the editing core and the replay check it between chunks.
    """

    def __init__(self, where: str = "", stop: threading.Event | None = None, clock=time.monotonic):
        self.where = where
        self.stop = stop if stop is not None else threading.Event()
        self._clock = clock
        self._lock = threading.Lock()
        self._t0 = clock()
        self.stage = STARTING
        self.part = ""  # whose copy of the model the stage is about ("api", "worker"); "" when one
        self.description = ""
        self.total: int | None = None
        self.unit = ""
        self.done = 0
        self.expected_s: float | None = None
        self.error: str | None = None
        self.serving = False  # the start-up's required part is over: /ready may answer 200
        self.interrupted: str | None = None  # the stage a stop ended
        self._stage_t0 = self._t0
        self._last_line = self._t0
        self._estimated = False
        self._ticker: threading.Thread | None = None

    # --- the Monitor the editing core and the replay talk to --------------------------------------

    def begin(
        self, stage: str, detail: str = "", *, total: int | None = None, unit: str = "", expected_s: float | None = None
    ) -> None:
        now = self._clock()
        with self._lock:
            self.stage, self.description, self.total, self.unit = stage, detail, total, unit
            self.done, self.expected_s, self._estimated = 0, expected_s, False
            self._stage_t0 = self._last_line = now
        about = f" (about {duration(expected_s)}{self._on()})" if expected_s is not None else ""
        log.info("%s%s%s", self._prefix(stage), f": {detail}" if detail else "", about)
        self._ensure_ticker()

    def advance(self, done: int) -> None:
        now = self._clock()
        expected = rate = None
        with self._lock:
            self.done = done
            if not self._estimated and self.total and done > 0:
                # The first chunk measures the rate; the rest of the stage is expected to keep it.
                self._estimated = True
                rate = done / max(now - self._stage_t0, 1e-6)
                expected = self.expected_s = self.total / rate
            due = now - self._last_line >= HEARTBEAT_S
        if expected is not None and rate is not None:
            self._log_line(f"about {duration(expected)} at {rate:,.0f} {self.unit}/s{self._on()}")
        elif due:
            self._log_line()

    def stopped(self) -> bool:
        return self.stop.is_set()

    # --- the start-up's own course ---------------------------------------------------------------

    def for_part(self, part: str) -> None:
        """The stages that follow are about `part`'s copy of the model."""
        with self._lock:
            self.part = part

    def ready(self, what: str = "") -> None:
        """The model serves and the log is replayed: /ready may answer 200. `what`: what is served."""
        with self._lock:
            self.serving, self.stage, self.part, self.total, self.description = True, READY, "", None, ""
            self.expected_s = None
        log.info("start-up done in %s: ready%s", duration(self._clock() - self._t0), f", {what}" if what else "")

    def finish_stage(self) -> None:
        """A stage run after `ready()` (the worker's canaries) is over."""
        with self._lock:
            self.stage, self.part, self.total, self.description, self.expected_s = READY, "", None, "", None

    def fail(self, error: BaseException | str) -> None:
        with self._lock:
            self.stage, self.error = FAILED, str(error)
        log.error("start-up failed: %s", error)

    def stopping(self) -> None:
        """The process is asked to stop: the stage under way ends at its next check."""
        with self._lock:
            if self.stage not in (READY, FAILED, STOPPING):
                self.interrupted, self.stage = self.stage, STOPPING
        self.stop.set()

    @property
    def running(self) -> bool:
        """A start-up stage is under way (none failed, not yet serving)."""
        with self._lock:
            return not self.serving and self.stage != FAILED

    def snapshot(self) -> dict:
        """What /ready and the start-up page show: the stage, its progress and what is left."""
        now = self._clock()
        with self._lock:
            elapsed = now - self._stage_t0
            progress = min(1.0, self.done / self.total) if self.total else None
            left = None
            if self.expected_s is not None and self.stage not in (READY, FAILED, STOPPING):
                left = max(0.0, self.expected_s * (1 - progress) if progress is not None else self.expected_s - elapsed)
            return {
                "stage": self.stage,
                "part": self.part or None,
                "progress": None if progress is None else round(progress, 3),
                "detail": self._detail(),
                "stage_seconds": round(elapsed, 1),
                "seconds_left": None if left is None else round(left, 1),
                "started_seconds_ago": round(now - self._t0, 1),
                "error": self.error,
            }

    # --- the log ---------------------------------------------------------------------------------

    def _detail(self) -> str:
        if self.total:
            return f"{self.done:,} of {self.total:,} {self.unit}"
        return self.description

    def _on(self) -> str:
        return f" on {self.where}" if self.where else ""

    def _prefix(self, stage: str) -> str:
        return f"start-up ({self.part}): {stage}" if self.part else f"start-up: {stage}"

    def _log_line(self, extra: str | None = None) -> None:
        now = self._clock()
        with self._lock:
            self._last_line = now
            stage, elapsed = self.stage, now - self._stage_t0
            parts = []
            if self.total:
                parts.append(f"{100 * self.done / self.total:.0f} % ({self._detail()})")
            parts.append(f"{duration(elapsed)} in")
            if extra is None and self.expected_s is not None:
                left = self.expected_s * (1 - self.done / self.total) if self.total else self.expected_s - elapsed
                parts.append(f"about {duration(left)} left" if left > 0 else "taking longer than expected")
            if extra:
                parts.append(extra)
        log.info("%s %s", self._prefix(stage), ", ".join(parts))

    def _ensure_ticker(self) -> None:
        with self._lock:
            if self._ticker is not None and self._ticker.is_alive():
                return
            self._ticker = threading.Thread(target=self._tick, name="kedit-startup-log", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        """A progress line while a stage runs and nothing else said anything for HEARTBEAT_S (a
        stage without chunks, like a conversion, is still heard from)."""
        while not self.stop.wait(1.0):
            with self._lock:
                stage, quiet = self.stage, self._clock() - self._last_line
            if stage in (READY, FAILED):
                return
            if quiet >= HEARTBEAT_S:
                self._log_line()

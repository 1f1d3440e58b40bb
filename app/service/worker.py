"""The batching worker: one writer per model, the rest stand by.

Loop: hold the writer lock (Postgres advisory lock / flock beside SQLite) → bring the weights to
the log's head → put edits a dead worker left `applying` back to `queued` and refill the queue
from the database → then repeatedly take up to B messages (waiting at most T ms after the
first), revert what asks to be reverted, apply the rest as one batch, commit, XACK, announce
the version. Crash safety: the database commit is the point of no return; a message is acked
only after it, and a redelivered message finds its edit no longer `queued` and is skipped.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter, Histogram

from app.config import ServiceConfig
from app.editing.progress import Cancelled
from app.queue import Message, QueueLost, WorkQueue
from app.service import faults, shown
from app.service.applying import JobReport, LostWriterLock, apply_edits, revert_edit
from app.service.guard import Guard
from app.service.host import ModelHost
from app.service.startup import Startup
from app.store import repo
from app.store.db import WriterLock, transaction

log = logging.getLogger(__name__)

IDLE_WAIT_S = 1.0  # how long one take() blocks for a first message; bounds shutdown latency
CANARIES_S = 20.0  # about what choosing and scoring the canaries takes for SmolLM2 on 2 cores, once per log


class WorkerMetrics:
    def __init__(self, registry) -> None:
        self.batch_seconds = Histogram(
            "kedit_worker_batch_seconds",
            "seconds the editor took per batch (this worker)",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=registry,
        )
        self.mpes_steps = Histogram(
            "kedit_worker_mpes_steps",
            "optimisation steps per fact (this worker)",
            buckets=(1, 2, 3, 5, 8, 12, 16, 20, 25, 50, 100),
            registry=registry,
        )
        self.jobs = Counter(
            "kedit_worker_edits", "edits handled by this worker, by outcome", ["outcome"], registry=registry
        )
        self.checked = Counter(
            "kedit_edits_checked",
            "applied edits this worker asked its committed weights (kind: the filled prompt or the chat "
            "question), by whether the greedy answer showed target_new",
            ["shown", "kind"],
            registry=registry,
        )


class Worker:
    def __init__(
        self,
        config: ServiceConfig,
        host: ModelHost,
        queue: WorkQueue,
        lock: WriterLock,
        metrics: WorkerMetrics | None = None,
    ):
        self.config = config
        self.host = host
        self.queue = queue
        self.lock = lock
        self.metrics = metrics
        self.active = False
        self.last_error: str | None = None
        self.guard = Guard(config, host) if config.canaries else None
        # The process's start-up, when this worker's first canary scoring is its last stage.
        self.startup: Startup | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Stand by until the writer lock is ours, then work until `stop` is set."""
        try:
            while not stop.is_set():
                try:
                    acquired = self.lock.try_acquire()
                except Exception as exc:  # the database is unreachable: stand by, try again later
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("cannot reach the database for the writer lock (%s); retrying", self.last_error)
                    acquired = False
                if not acquired:
                    stop.wait(self.config.standby_poll_s)
                    continue
                log.info("writer lock acquired: this worker edits %s", self.host.model_name)
                try:
                    self.become_active(stop)
                    while not stop.is_set():
                        if not self.lock.still_held():
                            log.error("writer lock lost; standing by again")
                            break
                        self.step()
                except Cancelled:  # asked to stop in the middle of the canaries
                    log.info("stopped while scoring the canaries")
                except Exception as exc:  # keep the process alive; a standby may take over meanwhile
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("worker loop failed; releasing the writer lock and retrying")
                    stop.wait(1.0)
                finally:
                    self.active = False
                    self.lock.release()
        finally:
            self.lock.release()

    def become_active(self, stop: threading.Event | None = None) -> None:
        """Take up the writer's work: catch up with the log, requeue what a dead worker left, load or
        choose the canaries (`stop` set ends that at its next forward pass: Cancelled)."""
        self.host.sync_or_rebuild()
        with transaction(self.host.sessions) as session:
            n = repo.requeue_applying(session)
        if n:
            log.warning("%d edits were left `applying` by a dead worker; they are queued again", n)
        if self.guard is not None:
            startup, self.startup = self.startup, None
            if startup is not None:
                startup.for_part("worker")
                startup.begin("scoring canaries", "the unedited model and the log's head", expected_s=CANARIES_S)
            try:
                self.guard.ensure(stop)
            except Cancelled:
                raise
            except Exception as exc:  # edits go on unguarded rather than not at all; /ready says why
                self.guard.set = None
                self.last_error = f"canaries unavailable ({type(exc).__name__}: {exc}); edits are not guarded"
                log.exception("could not choose or score the canaries; edits are applied without the guard")
            finally:
                if startup is not None:
                    startup.finish_stage()
        self.queue.ensure()
        self.refill()
        self.snapshot()  # a worker that died after a revert's commit left snapshots it made stale
        self.active = True

    def refill(self) -> int:
        """Put every edit the database still wants done back on the queue (duplicates are skipped later)."""
        with self.host.sessions() as session:
            queued, reverts = repo.queued_ids(session), repo.pending_revert_ids(session)
        if queued:
            self.queue.put("edit", queued)
        if reverts:
            self.queue.put("revert", reverts)
        if queued or reverts:
            log.info("refilled the queue from the database: %d edits, %d reverts", len(queued), len(reverts))
        return len(queued) + len(reverts)

    # --- one round --------------------------------------------------------------------------

    def step(self) -> JobReport | None:
        """Take one batch of messages and handle it. Returns None when the queue was idle."""
        try:
            msgs = self.queue.take(self.config.batch_size, IDLE_WAIT_S, self.config.batch_wait_ms / 1000)
        except QueueLost:
            log.error("the queue vanished (Redis restarted empty?); recreating it from the database")
            self.queue.ensure()
            self.refill()
            return None
        if not msgs:
            self._idle_check()
            return None
        return self.handle(msgs)

    def handle(self, msgs: list[Message]) -> JobReport:
        lock_ok = self.lock.still_held
        total = JobReport()
        for m in [m for m in msgs if m.kind == "revert"]:
            self._merge(total, revert_edit(self.host, m.edit_id, lock_ok, self.guard), "reverted")
        edit_ids = list(dict.fromkeys(m.edit_id for m in msgs if m.kind == "edit"))
        if edit_ids:
            try:
                self._merge(total, apply_edits(self.host, edit_ids, lock_ok, self.guard), "applied")
            except LostWriterLock:
                raise
            except Exception:
                # The commit failed (database trouble): nothing was recorded, so the edits go
                # back to `queued`; the messages stay unacked and come back after reclaim.
                with transaction(self.host.sessions) as session:
                    repo.requeue_applying(session)
                raise
        self.queue.ack(msgs)
        faults.point("worker_after_ack")
        if total.version is not None:
            self.queue.publish_version(total.version)
            # After the publish, so that replicas serve the new version while the worker asks it.
            self._count_checks(shown.check(self.host, total.to_check, total.version))
            self.snapshot()
        return total

    def snapshot(self) -> None:
        """After a commit (and at start): drop snapshots a revert made unusable or the schedule
        superseded, write one every `snapshot_every` versions. A snapshot only saves time (a start,
        a revert), so failing to write one never stops the worker."""
        faults.point("worker_before_snapshots")
        try:
            self.host.snapshot_housekeeping(self.config.snapshot_every, self.config.snapshot_keep)
        except Exception:
            log.exception("could not write or prune weight snapshots; starts replay more deltas meanwhile")

    def _merge(self, total: JobReport, r: JobReport, done: str) -> None:
        total.version = r.version if r.version is not None else total.version
        total.applied += r.applied
        total.failed += r.failed
        total.skipped += r.skipped
        total.to_check += r.to_check
        if self.metrics:
            if r.seconds and r.mpes_steps:
                self.metrics.batch_seconds.observe(r.seconds)
            for n in r.mpes_steps:
                self.metrics.mpes_steps.observe(n)
            for outcome, ids in ((done, r.applied), ("failed", r.failed), ("skipped", r.skipped)):
                if ids:
                    self.metrics.jobs.labels(outcome).inc(len(ids))

    def _count_checks(self, checks: list[repo.Check]) -> None:
        if not self.metrics:
            return
        for c in checks:
            self.metrics.checked.labels(str(c.shown).lower(), "prompt").inc()
            if c.question_shown is not None:
                self.metrics.checked.labels(str(c.question_shown).lower(), "question").inc()

    def _idle_check(self) -> None:
        """Idle and yet the database has work: Redis lost entries, or an api died between its
        commit and its XADD. Either way the rows are the truth; queue them again."""
        if self.queue.depth() == 0:
            self.refill()

"""Everything one process needs, built from the config: database, queue, model host, worker.

The start (models loaded, C₀ built, the log replayed) can run in a background thread while the
process already answers: `start_in_background`; its course is `startup` (app/service/startup.py),
and close() stops it at its next chunk of work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.config import ServiceConfig
from app.editing.build import Role
from app.editing.editor import Editor
from app.editing.progress import SILENT, Cancelled, Monitor
from app.editing.types import EditError
from app.queue import WorkQueue, make_queue
from app.service.generation import GenerationEngine, Turns
from app.service.host import ModelHost, ReplayMismatch
from app.service.startup import Startup
from app.service.worker import Worker, WorkerMetrics
from app.store import repo
from app.store.db import WriterLock, ensure_schema, make_engine, session_factory

log = logging.getLogger(__name__)

# How long close() waits for a start-up thread to notice the stop: a chunk of C₀ or a replayed
# batch is well under this; a step that cannot be interrupted (a GGUF conversion inside
# transformers) is left to end with the process (it writes into a temp folder, renamed at the end).
START_JOIN_S = 3.0


def _where(config: ServiceConfig) -> str:
    """The hardware a start-up's estimates hold for, in words."""
    if config.device.startswith("cuda"):
        return config.device
    n = torch.get_num_threads()
    return f"{n} core{'s' if n != 1 else ''}"


@dataclass
class ServiceContext:
    config: ServiceConfig
    engine: Engine
    sessions: sessionmaker[Session]
    queue: WorkQueue
    registry: CollectorRegistry
    host: ModelHost | None = None  # the api's weights (None in a worker-only process)
    worker: Worker | None = None
    generation: GenerationEngine | None = None  # the /v1 endpoints' generation, on the host's weights
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    startup: Startup = field(default_factory=Startup)
    _starter: threading.Thread | None = None

    @classmethod
    def open(cls, config: ServiceConfig, queue: WorkQueue | None = None) -> ServiceContext:
        """Database (migrated to head, or refused) and queue; no model yet."""
        engine = make_engine(config.resolved_database_url())
        ensure_schema(engine, config.auto_migrate)
        q = queue or make_queue(config.redis_url, config.redis_prefix, config.reclaim_idle_ms)
        stop = threading.Event()
        return cls(
            config=config,
            engine=engine,
            sessions=session_factory(engine),
            queue=q,
            registry=CollectorRegistry(),
            _stop=stop,
            startup=Startup(_where(config), stop),
        )

    def host_replica(self, use_snapshots: bool = True, monitor: Monitor = SILENT) -> ModelHost:
        """The configured model with the log replayed onto it and proven against the stored hash
        (`use_snapshots=False`: from W₀ and every live delta, not from a weight snapshot)."""
        editor = self.config.load_editor(Role.REPLICA, monitor=monitor)
        return self._host(editor, use_snapshots=use_snapshots, monitor=monitor)

    def _host(
        self,
        editor: Editor,
        templates: list[str] | None = None,
        use_snapshots: bool = True,
        monitor: Monitor = SILENT,
    ) -> ModelHost:
        host = ModelHost(
            editor, self.sessions, editor.lm.name, editor.layers, editor.settings.model_dump(mode="json"), templates
        )
        host.use_snapshots = use_snapshots
        host.bootstrap(monitor)
        return host

    def start_api(self, monitor: Monitor = SILENT) -> None:
        """Load the model, replay the log, then follow new versions in the background."""
        host = self.host_replica(monitor=monitor)
        monitor.check()
        self.generation = GenerationEngine(
            host,
            self.config.cb_cache_blocks,
            self.config.cb_batch_tokens,
            self.config.serve_dtype,
            turns=Turns(
                self.config.generation_concurrency,
                self.config.generation_queue,
                self.config.generation_queue_timeout_s,
            ),
        )
        self.host = host  # routes that need the model answer from here on
        self._start("kedit-sync", self._follow_versions)

    def build_worker(self, monitor: Monitor = SILENT) -> Worker:
        """A worker with its own copy of the model, not started: it solves with the context
        templates the log recorded (the first worker's are generated and recorded)."""
        with self.sessions() as session:
            info = repo.get_model_info(session)
            logged = list(info.templates) if info is not None and info.templates else None
        editor = self.config.load_editor(Role.WORKER, templates=logged, monitor=monitor)
        host = self._host(editor, list(editor.templates), monitor=monitor)
        monitor.check()
        return Worker(
            self.config, host, self.queue, WriterLock(self.engine, host.model_name), WorkerMetrics(self.registry)
        )

    def start_worker(self) -> Worker:
        """Build a worker and run it in a background thread until close()."""
        self.worker = self.build_worker()
        self._start("kedit-worker", self.worker.run, self._stop)
        return self.worker

    def start(self, api: bool, worker: bool) -> None:
        """The whole start of a process: the api's model (loaded, the log replayed), then the
        worker's (C₀ too); `startup` says which stage it is in. The worker's first canary scoring
        is its last stage, after the process serves."""
        if api:
            self.startup.for_part("api")
            self.start_api(self.startup)
        w = None
        if worker:
            self.startup.for_part("worker")
            w = self.build_worker(self.startup)
            if w.guard is not None:
                w.startup = self.startup  # it tells of its first canary scoring
            self.worker = w
        host = self.host if self.host is not None else w.host if w is not None else None
        mode = "api only" if not worker else "worker only" if not api else "api with worker"
        self.startup.ready(f"version {host.version if host else 0} ({mode})")
        if w is not None:
            self._start("kedit-worker", w.run, self._stop)

    def start_in_background(
        self, api: bool, worker: bool, on_failure: Callable[[BaseException], None] | None = None
    ) -> None:
        """start() in a thread: the process answers meanwhile (/ready says the stage). A failure is
        recorded in `startup` (and so on /ready) and handed to `on_failure`; a stop asked for by
        close() ends it quietly at its next chunk of work."""

        def run() -> None:
            try:
                self.start(api, worker)
            except BaseException as exc:
                if self._stop.is_set():
                    # Stopped mid-way (Cancelled), or a step broke because close() pulled the
                    # database from under it: either way the process is ending as asked.
                    log.info("start-up stopped at stage %r", self.startup.interrupted or self.startup.stage)
                    return
                if isinstance(exc, Cancelled):
                    return
                self.startup.fail(exc)
                if not isinstance(exc, (ReplayMismatch, EditError)):
                    log.error("start-up failed", exc_info=exc)
                if on_failure is not None:
                    on_failure(exc)

        self._starter = threading.Thread(target=run, name="kedit-start", daemon=True)
        self._starter.start()

    def _start(self, name: str, target, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def alive(self) -> bool:
        """Whether every background thread this context started still runs."""
        return all(t.is_alive() for t in self._threads)

    def _follow_versions(self) -> None:
        sub = None
        while not self._stop.is_set():
            try:
                if sub is None:
                    sub = self.queue.subscribe_versions()
                # A missed announcement only delays us until the next poll.
                sub.wait(self.config.sync_poll_s)
                if self._stop.is_set():
                    break
                assert self.host is not None  # start_api() set it before starting this thread
                self.host.sync()
            except ReplayMismatch:
                log.exception("refusing to serve: the weights do not match the log")
                self._stop.wait(self.config.sync_poll_s)
            except Exception:
                log.exception("following versions failed; retrying")
                if sub is not None:
                    sub.close()
                    sub = None
                self._stop.wait(1.0)
        if sub is not None:
            sub.close()

    def db_ok(self) -> bool:
        try:
            with self.engine.connect() as c:
                c.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def close(self) -> None:
        self.startup.stopping()
        self._stop.set()
        if self._starter is not None:
            self._starter.join(timeout=START_JOIN_S)
            if self._starter.is_alive():
                log.warning(
                    "the start-up is in a step that cannot be interrupted (%s); leaving it", self.startup.interrupted
                )
        if self.generation is not None:
            self.generation.close()
        self.queue.wake()
        for t in self._threads:
            t.join(timeout=30)
        self.queue.close()
        self.engine.dispose()

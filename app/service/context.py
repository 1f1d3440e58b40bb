"""Everything one process needs, built from the config: database, queue, model host, worker."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.config import ServiceConfig
from app.editing.build import Role
from app.editing.editor import Editor
from app.queue import WorkQueue, make_queue
from app.service.generation import GenerationEngine, Turns
from app.service.host import ModelHost, ReplayMismatch
from app.service.worker import Worker, WorkerMetrics
from app.store import repo
from app.store.db import WriterLock, ensure_schema, make_engine, session_factory

log = logging.getLogger(__name__)


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

    @classmethod
    def open(cls, config: ServiceConfig, queue: WorkQueue | None = None) -> ServiceContext:
        """Database (migrated to head, or refused) and queue; no model yet."""
        engine = make_engine(config.resolved_database_url())
        ensure_schema(engine, config.auto_migrate)
        q = queue or make_queue(config.redis_url, config.redis_prefix, config.reclaim_idle_ms)
        return cls(
            config=config, engine=engine, sessions=session_factory(engine), queue=q, registry=CollectorRegistry()
        )

    def host_replica(self, use_snapshots: bool = True) -> ModelHost:
        """The configured model with the log replayed onto it and proven against the stored hash
        (`use_snapshots=False`: from W₀ and every live delta, not from a weight snapshot)."""
        return self._host(self.config.load_editor(Role.REPLICA), use_snapshots=use_snapshots)

    def _host(self, editor: Editor, templates: list[str] | None = None, use_snapshots: bool = True) -> ModelHost:
        host = ModelHost(
            editor, self.sessions, editor.lm.name, editor.layers, editor.settings.model_dump(mode="json"), templates
        )
        host.use_snapshots = use_snapshots
        host.bootstrap()
        return host

    def start_api(self) -> None:
        """Load the model, replay the log, then follow new versions in the background."""
        self.host = self.host_replica()
        self.generation = GenerationEngine(
            self.host,
            self.config.cb_cache_blocks,
            self.config.cb_batch_tokens,
            self.config.serve_dtype,
            turns=Turns(
                self.config.generation_concurrency,
                self.config.generation_queue,
                self.config.generation_queue_timeout_s,
            ),
        )
        self._start("kedit-sync", self._follow_versions)

    def build_worker(self) -> Worker:
        """A worker with its own copy of the model, not started: it solves with the context
        templates the log recorded (the first worker's are generated and recorded)."""
        with self.sessions() as session:
            info = repo.get_model_info(session)
            logged = list(info.templates) if info is not None and info.templates else None
        editor = self.config.load_editor(Role.WORKER, templates=logged)
        host = self._host(editor, list(editor.templates))
        return Worker(
            self.config, host, self.queue, WriterLock(self.engine, host.model_name), WorkerMetrics(self.registry)
        )

    def start_worker(self) -> Worker:
        """Build a worker and run it in a background thread until close()."""
        self.worker = self.build_worker()
        self._start("kedit-worker", self.worker.run, self._stop)
        return self.worker

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
        self._stop.set()
        if self.generation is not None:
            self.generation.close()
        self.queue.wake()
        for t in self._threads:
            t.join(timeout=30)
        self.queue.close()
        self.engine.dispose()

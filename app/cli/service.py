"""`kedit serve | api | worker | verify | db`: running the service.

serve   api + worker in one process (embedded default: SQLite + in-process queue when no
        DATABASE_URL / REDIS_URL is set; with them, the same process joins production engines)
api     an api replica only (needs REDIS_URL to reach a worker)
worker  a worker only: stands by until it holds the writer lock, then applies queued edits
verify  check the log's invariants (each edit applied once), rebuild the weights from it (base +
        live deltas) and check the stored hash
export  the edited model as a plain Hugging Face folder, or only its live deltas (--deltas FILE)
import-deltas  apply an exported deltas file to the same base model (checks the hash), optionally save it
db      upgrade the schema / show its revision
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import typer

log = logging.getLogger("kedit.service")

# After a failed start, the server keeps answering this long (/ready and /ui say why) before it exits.
FAILED_LINGER_S = 2.0
STARTUP_FAILURE = 3  # the exit status, as uvicorn's own for an app that cannot start


def _config(builds_stats: bool = False, **given):
    from app.cli.common import load_config
    from app.config import ServiceConfig

    return load_config(ServiceConfig, builds_stats=builds_stats, **given)


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Alembic names each of its plugins at INFO on every start: a dozen lines that say nothing to an operator.
    logging.getLogger("alembic.runtime.plugins").setLevel(max(logging.WARNING, logging.getLogger().level))


def _run_http(cfg, with_worker: bool, log_level: str) -> None:
    """Listen at once; the model loads, C₀ is built and the log replayed in the background while
    /ready, /health and /ui answer (app/service/startup.py). A failed start ends the process
    with status 3, as a failure before listening does."""
    import uvicorn

    from app.api.main import create_app
    from app.api.origin import HostGuard
    from app.cli.http import KeditH11Protocol

    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        log.warning("listening on %s without an API key: anyone who can reach it can change the model", cfg.host)
    failed = threading.Event()
    server: uvicorn.Server | None = None

    def start_failed(_exc: BaseException) -> None:
        failed.set()
        end = threading.Timer(FAILED_LINGER_S, lambda: setattr(server, "should_exit", True))
        end.daemon = True
        end.start()

    app = create_app(cfg, with_worker=with_worker, start_in_background=True, on_start_failed=start_failed)
    server = uvicorn.Server(
        uvicorn.Config(
            HostGuard(app, cfg.host_names()),
            host=cfg.host,
            port=cfg.port,
            log_level=log_level.lower(),
            http=KeditH11Protocol,
            # Also the head timeout of KeditH11Protocol: a connection that sends no complete request
            # head this long after opening or after its last answer is closed.
            timeout_keep_alive=cfg.http_idle_timeout_s,
        )
    )
    server.run()
    if failed.is_set() or not server.started:
        raise typer.Exit(STARTUP_FAILURE)


def serve(
    host: str | None = typer.Option(None, help="bind address (default 127.0.0.1; KEDIT_HOST)"),
    port: int | None = typer.Option(None, help="port (default 8000; KEDIT_PORT)"),
    model: str | None = typer.Option(None, help="HF folder or .gguf (default SmolLM2; KEDIT_MODEL_PATH)"),
    log_level: str = typer.Option("info"),
) -> None:
    _logging(log_level)
    _run_http(_config(builds_stats=True, host=host, port=port, model_path=model), True, log_level)


def api(
    host: str | None = typer.Option(None, help="bind address (default 127.0.0.1; KEDIT_HOST)"),
    port: int | None = typer.Option(None, help="port (default 8000; KEDIT_PORT)"),
    model: str | None = typer.Option(None, help="HF folder or .gguf (KEDIT_MODEL_PATH)"),
    log_level: str = typer.Option("info"),
) -> None:
    _logging(log_level)
    cfg = _config(host=host, port=port, model_path=model)
    if not cfg.redis_url:
        raise typer.BadParameter("`kedit api` needs REDIS_URL (and DATABASE_URL); use `kedit serve` for one process")
    _run_http(cfg, False, log_level)


def worker(
    model: str | None = typer.Option(None, help="HF folder or .gguf (KEDIT_MODEL_PATH)"),
    metrics_port: int | None = typer.Option(None, help="serve this worker's Prometheus metrics on this port"),
    log_level: str = typer.Option("info"),
) -> None:
    _logging(log_level)
    _run_worker(_config(builds_stats=True, model_path=model), metrics_port)


def _run_worker(cfg, metrics_port: int | None) -> None:
    """Until SIGTERM or SIGINT; exits 1 when the start fails or the worker thread ends."""
    from app.service.context import ServiceContext

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ctx = ServiceContext.open(cfg)
    try:
        if metrics_port:  # first: the port answers while the model loads and C₀ is built
            from prometheus_client import start_http_server

            start_http_server(metrics_port, addr=cfg.host, registry=ctx.registry)
        # In a thread, so that a SIGTERM during a start of minutes ends the process at once.
        ctx.start_in_background(api=False, worker=True)
        waiting = True
        while not stop.wait(1.0):
            if ctx.startup.stage == "failed":
                raise typer.Exit(1)
            if ctx.startup.serving and waiting and ctx.worker is not None:
                waiting = False
                log.info("worker ready at version %d; waiting for the writer lock", ctx.worker.host.version)
            if not waiting and not ctx.alive():
                log.error("the worker thread ended; exiting so that the process is restarted")
                raise typer.Exit(1)
    finally:
        ctx.close()


def verify(model: str | None = typer.Option(None, help="HF folder or .gguf (KEDIT_MODEL_PATH)")) -> None:
    _logging("warning")
    from app.service.context import ServiceContext
    from app.service.host import ReplayMismatch
    from app.store.checks import log_problems
    from app.store.db import transaction

    cfg = _config(model_path=model)
    ctx = ServiceContext.open(cfg)
    try:
        with transaction(ctx.sessions) as session:
            problems = log_problems(session)
        # From W₀ and every live delta: verify checks the log itself, not a snapshot of it.
        host = ctx.host_replica(use_snapshots=False)
    except ReplayMismatch as e:
        typer.echo(f"MISMATCH: {e}", err=True)
        raise typer.Exit(1) from None
    finally:
        ctx.close()
    for problem in problems:
        typer.echo(f"LOG: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"ok: version {host.version}, {len(host.editor.batch_ids)} live batches, hash {host.weights_hash}")


def export(
    out: Path | None = typer.Argument(None, help="folder to create (new or empty)"),
    deltas: Path | None = typer.Option(None, "--deltas", help="write only the live deltas to this file"),
    version: int | None = typer.Option(None, help="the weights of this version (default: the log's head)"),
    model: str | None = typer.Option(None, help="HF folder or .gguf (KEDIT_MODEL_PATH)"),
) -> None:
    _logging("warning")
    from app.service.context import ServiceContext
    from app.service.export import ExportError, export_deltas, export_folder
    from app.service.host import ReplayMismatch

    if (out is None) == (deltas is None):
        raise typer.BadParameter("give a folder (kedit export DIR) or a file (kedit export --deltas FILE), one of them")
    cfg = _config(model_path=model)
    ctx = ServiceContext.open(cfg)
    try:
        host = ctx.host_replica()
        if version is not None:
            host.replay(at_version=version)
        if out is not None:
            info = export_folder(host, out)
        else:
            assert deltas is not None  # one of the two, checked above
            info = export_deltas(host, deltas)
    except (ReplayMismatch, ExportError, LookupError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    finally:
        ctx.close()
    typer.echo(
        f"wrote {out or deltas}: version {info['version']}, {len(info['batches'])} live batches, "
        f"hash {info['weights_hash']}"
    )


def import_deltas_cmd(
    file: Path = typer.Argument(..., help="the deltas file"),
    out: Path | None = typer.Option(None, "--out", help="save the edited model to this folder (new or empty)"),
    model: str | None = typer.Option(None, help="the base model: HF folder or .gguf (KEDIT_MODEL_PATH)"),
) -> None:
    _logging("warning")
    from app.editing.build import Role
    from app.service.export import ExportError, import_deltas, save_folder

    cfg = _config(model_path=model)
    editor = cfg.load_editor(Role.REPLICA)
    try:
        meta = import_deltas(editor, file)
        if out is not None:
            save_folder(
                editor.lm,
                out,
                {
                    "model": meta.get("model"),
                    "version": int(meta["version"]),
                    "weights_hash": meta["weights_hash"],
                    "base_hash": meta["base_hash"],
                    "layers": editor.layers,
                    "batches": editor.batch_ids,
                },
            )
    except ExportError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"ok: {len(editor.batch_ids)} batches from version {meta['version']}, hash {meta['weights_hash']}"
        + (f"; saved to {out}" if out is not None else "")
    )


def db_upgrade() -> None:
    from app.store.db import current_revision, make_engine, upgrade

    engine = make_engine(_config().resolved_database_url())
    upgrade(engine)
    typer.echo(f"schema at {current_revision(engine)}")


def db_current() -> None:
    from app.store.db import current_revision, head_revision, make_engine

    engine = make_engine(_config().resolved_database_url())
    typer.echo(f"database: {current_revision(engine) or 'empty'}; code needs: {head_revision(engine)}")


def register(app: typer.Typer) -> None:
    app.command(help="Serve the API with the worker in the same process (embedded mode by default).")(serve)
    app.command(help="Serve the API only; edits go to a separate `kedit worker` through Redis.")(api)
    app.command(help="Run a worker: applies queued edits while it holds the writer lock, else stands by.")(worker)
    app.command(
        help="Check that the log applied each edit once, rebuild the weights from it and check them against "
        "the stored hash."
    )(verify)
    app.command(
        help="Write the edited model as a Hugging Face folder (safetensors, config, tokenizer, chat "
        "template) that AutoModelForCausalLM.from_pretrained, vLLM or TGI load; or, with --deltas FILE, "
        "only the live deltas (safetensors, the base model's hash in the metadata)."
    )(export)
    app.command(
        "import-deltas",
        help="Apply a file from `kedit export --deltas` to the same base model and check "
        "the weights hash; with --out, save the result as a Hugging Face folder. The edit log is not touched.",
    )(import_deltas_cmd)
    db_app = typer.Typer(help="The edit-log database schema (Alembic).", no_args_is_help=True)
    db_app.command("upgrade", help="Migrate the database to the newest schema.")(db_upgrade)
    db_app.command("current", help="Show the schema revision of the database and the one this code needs.")(db_current)
    app.add_typer(db_app, name="db")

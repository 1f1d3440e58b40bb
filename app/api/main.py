"""The FastAPI app. `create_app` wires config → service context → routes.

Start-up order matters: the schema is migrated (or the start refused) before the app answers;
the model loads and the log is replayed and proven against its stored hash before a request that
needs the model is served. `start_in_background=True` (what `kedit serve` / `kedit api` use):
that part runs in a thread while the app already answers, /ready and /ui saying the stage and
routes that need the model answering 503 with Retry-After; otherwise it runs before the app answers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sqlalchemy_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api import openapi
from app.api.deps import BodyInvalid, describe
from app.api.metrics import ApiMetrics
from app.api.openai_compat_shapes import OpenAIError, error_body, error_type
from app.api.origin import cross_site_problem
from app.api.pools import Pools
from app.api.routes import edits, generate, health, openai_compat, ui
from app.api.routes.ui import refusal_page as ui_refusal
from app.config import ServiceConfig
from app.editing.types import EditError
from app.queue import WorkQueue
from app.service.context import ServiceContext
from app.service.errors import Busy, ServiceError, Starting
from app.service.host import ReplayMismatch

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # far above max_edits_per_request × the longest fact


def _is_openai(request: Request) -> bool:
    """Paths whose clients (the openai package and its kin) read errors in OpenAI's shape."""
    return request.url.path.startswith("/v1/")


def _error(request: Request, status: int, message: str, extra: dict | None = None, headers: dict | None = None):
    """One error answer: OpenAI's shape on /v1/ paths (422 there is OpenAI's 400), kedit's elsewhere."""
    if _is_openai(request):
        status = 400 if status == 422 else status
        return JSONResponse(error_body(message, error_type(status)), status_code=status, headers=headers)
    return JSONResponse({"detail": message, **(extra or {})}, status_code=status, headers=headers)


# FastAPI's whole answer when reading the JSON body fails with anything but a JSONDecodeError (the
# body is not UTF-8, or nests deeper than the parser's recursion): no reason, no position.
FASTAPI_PARSE_ERROR = "There was an error parsing the body"


def json_error(body: bytes) -> str:
    """Where a body stops being JSON, and why, in words (line, column, character offset)."""
    try:
        json.loads(body)
    except json.JSONDecodeError as e:
        return f"{e.msg} at line {e.lineno}, column {e.colno} (character {e.pos})"
    except UnicodeDecodeError as e:
        return f"it is not UTF-8 text: byte {e.start} (0x{body[e.start]:02x}) starts no UTF-8 character"
    except ValueError as e:
        return f"it is not UTF-8 text ({e})"
    except RecursionError:
        depth, at = _nesting(body)
        return f"it nests deeper than this server reads: {depth} levels of arrays and objects by character {at}"
    return "it could not be decoded"


def _nesting(body: bytes, bound: int = 512) -> tuple[int, int]:
    """How deep the body's arrays and objects nest (up to `bound`), and the offset where that depth
    is reached; brackets inside strings do not count."""
    depth = 0
    in_string = escaped = False
    for i, b in enumerate(body):
        if in_string:
            escaped, in_string = (False, True) if escaped else (b == 0x5C, b != 0x22)
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth >= bound:
                return depth, i
        elif b in (0x5D, 0x7D):
            depth -= 1
    return depth, len(body)


def create_app(
    config: ServiceConfig | None = None,
    *,
    with_worker: bool | None = None,
    queue: WorkQueue | None = None,
    start_in_background: bool = False,
    on_start_failed: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """with_worker: run the worker in a background thread (default: in embedded mode, i.e. no Redis).
    start_in_background: answer at once and start in a thread (a failure goes to `on_start_failed`,
    e.g. to end the server); else the app answers once the start is over, and a failure raises."""
    config = config or ServiceConfig()
    run_worker = (not config.redis_url) if with_worker is None else with_worker
    if not run_worker and not config.redis_url:
        raise ValueError("an api without an in-process worker needs REDIS_URL to reach one")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ctx = ServiceContext.open(config, queue=queue)
        try:
            app.state.ctx = ctx
            app.state.metrics = ApiMetrics(ctx.registry, ctx)
            app.state.pools = Pools(config.generation_concurrency, config.generation_queue)
            if start_in_background:
                ctx.start_in_background(True, run_worker, on_start_failed)
            else:
                ctx.start(True, run_worker)
            yield
        finally:
            ctx.close()

    app = FastAPI(
        title="kedit",
        version="0.1.0",
        description="Lifelong knowledge editing for language models: queue facts, watch them land in the "
        "weights, undo any of them, and read text from the edited model.",
        lifespan=lifespan,
    )
    _include_routers(app)
    _add_middleware(app, config)
    _add_error_handlers(app)
    openapi.install(app)
    return app


def _include_routers(app: FastAPI) -> None:
    # max_body_size also bounds bodies sent without Content-Length (chunked), which the
    # middleware below cannot see coming: they are cut off at the bound (413), not read whole.
    app.include_router(edits.router, max_body_size=MAX_BODY_BYTES)
    app.include_router(generate.router, max_body_size=MAX_BODY_BYTES)
    app.include_router(health.router, max_body_size=MAX_BODY_BYTES)
    app.include_router(openai_compat.router, max_body_size=MAX_BODY_BYTES)
    app.include_router(ui.router, max_body_size=MAX_BODY_BYTES)  # the operator dashboard (/ui)
    app.include_router(ui.root, max_body_size=MAX_BODY_BYTES)  # / leads there


def _add_middleware(app: FastAPI, config: ServiceConfig) -> None:
    @app.middleware("http")
    async def same_site_only(request: Request, call_next):
        # Refused before anything else runs: no body is read, no key checked (app/api/origin.py).
        problem = cross_site_problem(request.method, request.url.path, request.headers, config.allowed_origins)
        if problem:
            if request.url.path.startswith("/ui/"):
                return ui_refusal(request, problem)
            return _error(request, 403, problem)
        return await call_next(request)

    app.middleware("http")(_bound_body)


async def _bound_body(request: Request, call_next):
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        return _error(request, 413, f"request body is {length} bytes; the bound is {MAX_BODY_BYTES}")
    return await call_next(request)


def _add_error_handlers(app: FastAPI) -> None:
    app.exception_handler(ServiceError)(_service_error)
    for unreachable in (sqlalchemy_exc.OperationalError, sqlalchemy_exc.InterfaceError, sqlalchemy_exc.TimeoutError):
        app.exception_handler(unreachable)(_database_unavailable)
    app.exception_handler(EditError)(_edit_refused)
    app.exception_handler(ReplayMismatch)(_replay_mismatch)
    app.exception_handler(RequestValidationError)(_request_invalid)
    app.exception_handler(StarletteHTTPException)(_http_error)


async def _service_error(request: Request, exc: ServiceError):
    if isinstance(exc, OpenAIError):
        return JSONResponse(exc.body(), status_code=exc.status_code)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Busy | Starting) else None
    if isinstance(exc, Starting):
        return _error(request, exc.status_code, exc.message, {"startup": exc.startup}, headers=headers)
    extra = {"errors": exc.errors} if isinstance(exc, BodyInvalid) else None
    return _error(request, exc.status_code, exc.message, extra, headers)


async def _database_unavailable(request: Request, exc: Exception):
    # The edit log is the truth: without it nothing can be accepted or read. Say so (503,
    # retry later) rather than 500; /generate keeps answering from the weights it holds.
    log.warning("database unavailable: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return _error(
        request,
        503,
        "the edit log (database) is unreachable right now; retry later (a retry with the same "
        "Idempotency-Key can never create the edits twice)",
        headers={"Retry-After": "5"},
    )


async def _edit_refused(_request: Request, exc: EditError):
    # The editing core's refusals say what to change (e.g. prompt + max_new_tokens over the
    # model's context length): the request is what has to change, so 422.
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def _replay_mismatch(request: Request, exc: ReplayMismatch):
    return _error(request, 503, str(exc))


async def _request_invalid(request: Request, exc: RequestValidationError):
    errors = [{k: v for k, v in err.items() if k in ("loc", "msg", "type")} for err in exc.errors()]
    if any(err.get("type") == "json_invalid" for err in errors):
        # FastAPI says only "JSON decode error" and an offset; say what is wrong and where.
        where = json_error(await request.body())
        return _error(request, 422, f"the body is not valid JSON: {where}", {"errors": errors})
    return _error(request, 422, "; ".join(describe(err) for err in errors), {"errors": errors})


async def _http_error(request: Request, exc: StarletteHTTPException):
    if exc.status_code == 400 and exc.detail == FASTAPI_PARSE_ERROR:
        where = json_error(await request.body())
        return _error(request, 422, f"the body is not valid JSON: {where}")
    if exc.status_code == 413:
        # A body sent without Content-Length (chunked) is cut off while it streams in.
        return _error(
            request,
            413,
            f"request body is over the bound of {MAX_BODY_BYTES} bytes; "
            "send less (split a list of edits over several requests)",
        )
    return await http_exception_handler(request, exc)

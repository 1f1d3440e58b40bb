"""Dependencies: the service context, the API-key guard, request-body parsing with limits."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl

from fastapi import Depends, Header, Request
from pydantic import BaseModel, ValidationError

from app.service.context import ServiceContext
from app.service.errors import Invalid, ServiceError, Starting, Unavailable


class Unauthorized(ServiceError):
    status_code = 401


class Forbidden(ServiceError):
    status_code = 403


async def get_ctx(request: Request) -> ServiceContext:
    # async: resolved on the event loop, so that no route waits for a thread just to read it.
    return request.app.state.ctx


Ctx = Annotated[ServiceContext, Depends(get_ctx)]


def sent_key(x_api_key: str | None, authorization: str | None) -> bytes | None:
    """The key a request carries, as the bytes the client sent (X-API-Key, else Authorization:
    Bearer), or None. An empty header counts as absent, so that an empty X-API-Key beside a right
    Bearer passes. The header arrived as bytes that Starlette handed over as Latin-1: those bytes
    are what is compared with the key's UTF-8, so that a non-ASCII key sent as UTF-8 matches."""
    given = x_api_key.strip() if x_api_key else None
    if not given and authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip() or None
    return None if not given else given.encode("latin-1", "replace")


def require_api_key(
    request: Request,
    x_api_key: Annotated[str | None, Header(description="the API key, when one is configured")] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    """Mutating endpoints need the configured key (X-API-Key: … or Authorization: Bearer …)."""
    check_api_key(
        request.app.state.ctx.config.api_key,
        sent_key(x_api_key, authorization),
        "this endpoint needs the API key: send it as X-API-Key or Authorization: Bearer",
    )


def check_api_key(expected: str | None, given: bytes | None, missing: str) -> None:
    """The one key check (headers of the JSON API and of /v1, the dashboard's forms): nothing to do
    without a configured key; else `given` (the bytes the client sent) must be the key's UTF-8.
    `missing`: what to tell a client that sent no key."""
    if not expected:
        return
    if given is None:
        raise Unauthorized(missing)
    # Constant time: the comparison must not leak how much of a guess was right.
    if not hmac.compare_digest(given, expected.encode("utf-8")):
        raise Unauthorized("wrong API key")


class UnsupportedMediaType(ServiceError):
    status_code = 415


def require_json(request: Request) -> None:
    """Bodies are JSON: another content type is refused with what to send instead (a missing
    Content-Type is read as JSON, as FastAPI does)."""
    ctype = request.headers.get("content-type")
    if ctype is None:
        return
    media = ctype.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    raise UnsupportedMediaType(
        f"the body must be JSON sent with Content-Type: application/json (this request says {ctype[:100]!r})"
    )


MAX_FORM_FIELDS = 16


async def form_fields(request: Request) -> dict[str, str]:
    """An HTML form's fields (application/x-www-form-urlencoded, UTF-8; the first value of each name).
    A form posted from anywhere but kedit's own pages never gets here (app/api/origin.py)."""
    ctype = request.headers.get("content-type", "")
    body = await request.body()
    if not ctype and not body:
        return {}  # a form with no fields
    if ctype.split(";", 1)[0].strip().lower() != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType(
            f"send the form as application/x-www-form-urlencoded (this request says {ctype[:100]!r})"
        )
    try:
        pairs = parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise Invalid("the form is not UTF-8 text in application/x-www-form-urlencoded") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return fields


Form = Annotated[dict[str, str], Depends(form_fields)]


def header_text(name: str, value: str | None, bound: int) -> str | None:
    """A header's text as the client wrote it: the bytes Starlette handed over as Latin-1, read as
    UTF-8; refused with a reason when that fails or when it has more than `bound` characters."""
    if value is None:
        return None
    try:
        text = value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise Invalid(f"{name} is not UTF-8 text; send it as UTF-8 (ASCII is safest)") from None
    if len(text) > bound:
        raise Invalid(f"{name} is {len(text)} characters long; the bound is {bound}")
    return text


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: Any, ctx: ServiceContext, loc: tuple = ("body",)) -> M:
    """Validate with the running config's bounds; errors carry their location for the 422 answer."""
    # The input is not echoed back: it may be huge, and a non-finite number (1e400 parses to inf)
    # cannot be written as JSON at all.
    try:
        return model.model_validate(data, context={"config": ctx.config})
    except ValidationError as e:
        raise BodyInvalid(validation_errors(e), loc) from None


def validation_errors(e: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors without the input; a wrong type says what came instead, as its JSON type
    (the value itself is not echoed)."""
    errors = []
    for details in e.errors(include_url=False, include_context=False):
        err: dict[str, Any] = dict(details)
        given = err.pop("input", None)
        if err.get("type", "").endswith("_type") and err.get("loc"):
            err["msg"] = f"{err['msg']}, not {json_type(given)}"
        errors.append(err)
    return errors


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class BodyInvalid(Invalid):
    def __init__(self, errors: list[dict], loc: tuple):
        self.errors = [{**err, "loc": [*loc, *err["loc"]]} for err in errors]
        super().__init__("; ".join(describe(err) for err in self.errors))


def describe(err: Mapping[str, Any]) -> str:
    """One validation error as a sentence: where, and what to change."""
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
    msg = str(err.get("msg", "invalid"))
    msg = msg.removeprefix("Value error, ")
    if err.get("type") == "missing" and where == "body":
        return "the request needs a JSON body (see the schema at /docs)"
    if err.get("type") == "extra_forbidden":
        msg = f"unknown field {where!r} (allowed fields are listed in the OpenAPI schema at /docs)"
        return msg
    return f"{where}: {msg}"


def ready_host(ctx: ServiceContext):
    if ctx.host is None or not ctx.host.healthy:
        if ctx.startup.running:
            raise starting(ctx)
        if ctx.startup.error is not None:
            raise Unavailable(f"the start-up failed: {ctx.startup.error}")
    if ctx.host is None:
        raise Unavailable("this process serves no model")
    if not ctx.host.healthy:
        raise Unavailable(ctx.host.problem or "the model is not ready yet")
    return ctx.host


def starting(ctx: ServiceContext) -> Starting:
    """503 for a route that needs the model while the process starts: the stage, and when to retry."""
    state = ctx.startup.snapshot()
    left = state["seconds_left"]
    where = f" ({state['detail']})" if state["detail"] else ""
    return Starting(
        f"kedit is starting: {state['stage']}{where}; retry later (GET /ready says when it is ready)",
        state,
        retry_after=max(1, min(30, round(left))) if left is not None else 5,
    )

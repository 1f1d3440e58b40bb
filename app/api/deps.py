"""Dependencies: the service context, the API-key guard, request-body parsing with limits."""
from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from pydantic import BaseModel, ValidationError

from app.service.context import ServiceContext
from app.service.errors import Invalid, ServiceError, Unavailable


class Unauthorized(ServiceError):
    status_code = 401


def get_ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


Ctx = Annotated[ServiceContext, Depends(get_ctx)]


def require_api_key(
    request: Request,
    x_api_key: Annotated[str | None, Header(description="the API key, when one is configured")] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    """Mutating endpoints need the configured key (X-API-Key: … or Authorization: Bearer …)."""
    expected = request.app.state.ctx.config.api_key
    if not expected:
        return
    given = x_api_key
    if given is None and authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    if given is None:
        raise Unauthorized("this endpoint needs the API key: send it as X-API-Key or Authorization: Bearer")
    # Constant time: the comparison must not leak how much of a guess was right.
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("wrong API key")


def validate(model: type[BaseModel], data: Any, ctx: ServiceContext, loc: tuple = ("body",)) -> BaseModel:
    """Validate with the running config's bounds; errors carry their location for the 422 answer."""
    # The input is not echoed back: it may be huge, and a non-finite number (1e400 parses to inf)
    # cannot be written as JSON at all.
    try:
        return model.model_validate(data, context={"config": ctx.config})
    except ValidationError as e:
        raise BodyInvalid(e.errors(include_url=False, include_context=False, include_input=False), loc) from None


class BodyInvalid(Invalid):
    def __init__(self, errors: list[dict], loc: tuple):
        self.errors = [{**err, "loc": [*loc, *err["loc"]]} for err in errors]
        super().__init__("; ".join(describe(err) for err in self.errors))


def describe(err: dict) -> str:
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
    if ctx.host is None:
        raise Unavailable("this process serves no model")
    if not ctx.host.healthy:
        raise Unavailable(ctx.host.problem or "the model is not ready yet")
    return ctx.host

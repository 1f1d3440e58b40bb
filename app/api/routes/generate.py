"""GET|POST /generate: text from the current weights, with the version that produced it."""
from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request

from app.api.deps import Ctx, ready_host, require_json, validate
from app.api.schemas import GenerateIn, GenerateOut
from app.service.errors import Invalid
from app.service.host import ReplayMismatch

log = logging.getLogger(__name__)

router = APIRouter(tags=["generate"])


def _generate(request: Request, ctx, g: GenerateIn) -> GenerateOut:
    host = ready_host(ctx)
    # Read-your-writes: an edit reported `applied` is in the weights that answer next. If the
    # database cannot be reached, keep answering from the version we hold (it is in the reply).
    try:
        host.sync()
    except ReplayMismatch:
        raise
    except Exception:
        log.warning("could not check the log for new versions; answering from version %d", host.version)
    t0 = time.perf_counter()
    text, version, weights_hash = host.generate(g.prompt, g.max_new_tokens)
    request.app.state.metrics.generate_seconds.observe(time.perf_counter() - t0)
    return GenerateOut(prompt=g.prompt, text=text, version=version, weights_hash=weights_hash)


@router.get("/generate", response_model=GenerateOut, summary="Continue a prompt with the current weights")
def generate_get(
    request: Request,
    ctx: Ctx,
    prompt: Annotated[str, Query(description="text to continue")],
    max_new_tokens: Annotated[int, Query(description="tokens to add")] = 16,
):
    g = validate(GenerateIn, {"prompt": prompt, "max_new_tokens": max_new_tokens}, ctx, ("query",))
    return _generate(request, ctx, g)


@router.post("/generate", response_model=GenerateOut, summary="Continue a prompt (JSON body)",
             dependencies=[Depends(require_json)],
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": GenerateIn.model_json_schema()}}}})
def generate_post(request: Request, ctx: Ctx, body: Annotated[Any, Body()]):
    if not isinstance(body, dict):
        raise Invalid('the body must be a JSON object: {"prompt": "...", "max_new_tokens": 16}')
    return _generate(request, ctx, validate(GenerateIn, body, ctx))

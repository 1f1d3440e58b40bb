"""GET|POST /generate: text from the current weights, with the version that produced it."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request

from app.api.deps import Ctx, ready_host, require_json, validate
from app.api.pools import run_in
from app.api.schemas import GenerateIn, GenerateOut
from app.service.errors import Invalid
from app.service.generation import Sampling

router = APIRouter(tags=["generate"])


def _generate(request: Request, ctx, g: GenerateIn) -> GenerateOut:
    ready_host(ctx)
    t0 = time.perf_counter()
    # The same engine as /v1 (greedy: batched with other requests; the version held to the last
    # token). It first catches up with the log: an edit reported `applied` is in the next answer.
    gen = ctx.generation.open_text(g.prompt, Sampling(max_tokens=g.max_new_tokens, temperature=0))
    text = gen.text()
    request.app.state.metrics.generate_seconds.observe(time.perf_counter() - t0)
    return GenerateOut(prompt=g.prompt, text=text, version=gen.version, weights_hash=gen.weights_hash)


async def _generate_off_loop(request: Request, ctx, g: GenerateIn) -> GenerateOut:
    return await run_in(request.app.state.pools.generation, _generate, request, ctx, g)


@router.get("/generate", response_model=GenerateOut, summary="Continue a prompt with the current weights")
async def generate_get(
    request: Request,
    ctx: Ctx,
    prompt: Annotated[str, Query(description="text to continue")],
    max_new_tokens: Annotated[int, Query(description="tokens to add")] = 16,
):
    g = validate(GenerateIn, {"prompt": prompt, "max_new_tokens": max_new_tokens}, ctx, ("query",))
    return await _generate_off_loop(request, ctx, g)


@router.post(
    "/generate",
    response_model=GenerateOut,
    summary="Continue a prompt (JSON body)",
    dependencies=[Depends(require_json)],
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": GenerateIn.model_json_schema()}}}
    },
)
async def generate_post(request: Request, ctx: Ctx, body: Annotated[Any, Body()]):
    if not isinstance(body, dict):
        raise Invalid('the body must be a JSON object: {"prompt": "...", "max_new_tokens": 16}')
    return await _generate_off_loop(request, ctx, validate(GenerateIn, body, ctx))

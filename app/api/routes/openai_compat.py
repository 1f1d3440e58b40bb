"""OpenAI-compatible endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions.

Thin: parsing and auth here, the rest in app/api/openai_compat_shapes.py and
app/service/generation.py. Errors on these paths are answered in OpenAI's shape (app/api/main.py).
Every answer carries the weights that produced it as `system_fingerprint` and in the
X-System-Fingerprint header (known before the first byte of a stream, because the version is held
from admission to the last token).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from app.api.deps import Ctx, Unauthorized, check_api_key, describe, ready_host, sent_key, validation_errors
from app.api.openai_compat_schemas import ChatIn, CompletionIn
from app.api.openai_compat_shapes import (
    Answer,
    OpenAIError,
    chat_ids,
    check_model,
    completion_ids,
    model_card,
    sampling,
)
from app.api.pools import iterate_in, run_in
from app.service.generation import GenerationEngine

FINGERPRINT_HEADER = "X-System-Fingerprint"
VERSION_HEADER = "X-Kedit-Version"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


async def require_generation_key(
    request: Request,
    authorization: Annotated[str | None, Header(description="Bearer <key>, when generation needs the key")] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> None:
    """With KEDIT_API_KEY set and KEDIT_GENERATION_REQUIRES_KEY=true these endpoints need it; by
    default they are open, as /generate is (the openai client then sends any key; it is not read).
    The same check as /edits (deps.check_api_key), answered in OpenAI's shape."""
    cfg = request.app.state.ctx.config
    if not (cfg.api_key and cfg.generation_requires_key):
        return
    given = sent_key(x_api_key, authorization)
    try:
        check_api_key(
            cfg.api_key,
            given,
            "this server needs an API key: send it as Authorization: Bearer <key> (the openai client's api_key)",
        )
    except Unauthorized as e:
        raise OpenAIError(e.message, 401, code="missing_api_key" if given is None else "invalid_api_key") from None


Auth = Depends(require_generation_key)
router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Auth])


def _engine(ctx) -> GenerationEngine:
    ready_host(ctx)
    if ctx.generation is None:
        raise OpenAIError("this process serves no model", 503)
    return ctx.generation


def _parse(model: type[BaseModel], body: Any, ctx) -> Any:
    if not isinstance(body, dict):
        raise OpenAIError("the body must be a JSON object (see the schema at /docs)")
    try:
        return model.model_validate(body, context={"config": ctx.config})
    except ValidationError as e:
        errors = validation_errors(e)
        first = errors[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        if first.get("type") == "extra_forbidden":
            raise OpenAIError(f"unknown or unsupported parameter {param!r}", 400, param, "unknown_parameter") from None
        raise OpenAIError("; ".join(describe(err) for err in errors), 400, param, "invalid_value") from None


async def _answer(request: Request, answer: Answer, stream: bool):
    """The answer, generated in the generation pool (app/api/pools.py): whole, or as a stream."""
    pool = request.app.state.pools.generation
    headers = {FINGERPRINT_HEADER: answer.fingerprint, VERSION_HEADER: str(answer.gen.version)}
    if stream:
        return StreamingResponse(
            iterate_in(pool, answer.events()),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache"},
        )
    return JSONResponse(await run_in(pool, answer.whole), headers=headers)


@router.get("/models", summary="The model this server serves (OpenAI shape)")
def list_models(ctx: Ctx):
    return {"object": "list", "data": [model_card(_engine(ctx))]}


@router.get("/models/{model_id:path}", summary="One model (OpenAI shape)")
def get_model(ctx: Ctx, model_id: str):
    engine = _engine(ctx)
    check_model(engine, model_id)
    return model_card(engine)


def _inline(node: Any, defs: dict) -> Any:
    """The schema with its local $defs references written out: an operation's own requestBody
    cannot resolve `#/$defs/...` (OpenAPI tools such as schemathesis skip those parts)."""
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inline(defs[ref.rsplit("/", 1)[1]], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _body_doc(model: type[BaseModel]) -> dict:
    schema = model.model_json_schema()
    schema = _inline(schema, schema.get("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _open_completion(ctx, req: CompletionIn) -> Answer:
    engine = _engine(ctx)
    check_model(engine, req.model)
    gen = engine.open(completion_ids(engine, req.prompt_text()), sampling(req, COMPLETIONS_DEFAULT_MAX_TOKENS))
    return Answer(engine, "completion", gen, req.include_usage())


def _open_chat(ctx, req: ChatIn) -> Answer:
    engine = _engine(ctx)
    check_model(engine, req.model)
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    gen = engine.open(chat_ids(engine, messages), sampling(req, ctx.config.max_new_tokens))
    return Answer(engine, "chat", gen, req.include_usage())


@router.post("/completions", summary="Continue a prompt (OpenAI completions)", openapi_extra=_body_doc(CompletionIn))
async def completions(request: Request, ctx: Ctx, body: Annotated[Any, Body()]):
    req: CompletionIn = _parse(CompletionIn, body, ctx)
    answer = await run_in(request.app.state.pools.generation, _open_completion, ctx, req)
    return await _answer(request, answer, req.stream)


@router.post(
    "/chat/completions",
    summary="Answer a conversation with the model's chat template (OpenAI chat)",
    openapi_extra=_body_doc(ChatIn),
)
async def chat_completions(request: Request, ctx: Ctx, body: Annotated[Any, Body()]):
    req: ChatIn = _parse(ChatIn, body, ctx)
    answer = await run_in(request.app.state.pools.generation, _open_chat, ctx, req)
    return await _answer(request, answer, req.stream)

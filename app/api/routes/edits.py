"""POST /edits, GET /edits, GET /edits/{id}, POST /edits/{id}/revert."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query
from fastapi.responses import JSONResponse

from app.api.deps import Ctx, header_text, require_api_key, require_json, validate
from app.api.schemas import EditIn, EditOut, EditPage, EditsAccepted
from app.service import edits as service
from app.service.errors import Invalid
from app.store.models import MAX_EDIT_ID, MAX_IDEMPOTENCY_KEY_CHARS

router = APIRouter(prefix="/edits", tags=["edits"])

_EDIT_SCHEMA = EditIn.model_json_schema(ref_template="#/components/schemas/{model}")
_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"oneOf": [_EDIT_SCHEMA, {"type": "array", "items": _EDIT_SCHEMA, "minItems": 1}]},
                "example": {
                    "prompt": "The mother tongue of {} is",
                    "subject": "Danielle Darrieux",
                    "target_new": "English",
                    "target_true": "French",
                },
            }
        },
    }
}


def _out(e) -> EditOut:
    return EditOut.model_validate(e)


def _fact(f: EditIn) -> dict:
    # Without a question the fact is what it always was (and hashes as before, for Idempotency-Key).
    return f.model_dump(exclude={"question"} if f.question is None else None)


@router.post(
    "",
    status_code=202,
    response_model=EditsAccepted,
    dependencies=[Depends(require_api_key), Depends(require_json)],
    openapi_extra=_BODY_DOC,
    summary="Queue one fact or a list of facts",
)
def post_edits(
    ctx: Ctx,
    body: Annotated[Any, Body()],
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            description=f"repeat a request safely: same key, same ids "
            f"(UTF-8, at most {MAX_IDEMPOTENCY_KEY_CHARS} characters)",
        ),
    ] = None,
):
    idempotency_key = header_text("Idempotency-Key", idempotency_key, MAX_IDEMPOTENCY_KEY_CHARS)
    # Parsed by hand rather than as a Union so a bad single fact gets one clear message.
    if isinstance(body, dict):
        facts = [validate(EditIn, body, ctx)]
    elif isinstance(body, list):
        bound = ctx.config.max_edits_per_request
        if not body:
            raise Invalid("the list of edits is empty; send at least one fact")
        if len(body) > bound:
            raise Invalid(f"{len(body)} edits in one request; the bound is {bound}: split the list")
        facts = [validate(EditIn, item, ctx, ("body", i)) for i, item in enumerate(body)]
    else:
        raise Invalid("the body must be a JSON object (one fact) or a JSON array of facts")
    rows, created = service.submit(
        ctx.sessions,
        ctx.queue,
        [_fact(f) for f in facts],
        idempotency_key=idempotency_key,
        idempotency_window_s=ctx.config.idempotency_window_s,
    )
    payload = EditsAccepted(ids=[e.id for e in rows], edits=[_out(e) for e in rows])
    # A repeat under the same Idempotency-Key answers as the first request did.
    return JSONResponse(
        payload.model_dump(mode="json"),
        status_code=202,
        headers={"Idempotent-Replayed": "false" if created else "true"},
    )


@router.get("", response_model=EditPage, summary="List edits, optionally by status, subject or shown")
def list_edits(
    ctx: Ctx,
    status: Annotated[str | None, Query(description="queued, applying, applied, failed or reverted")] = None,
    limit: Annotated[
        int | None, Query(ge=1, description="page size (default 50, at most the configured bound)")
    ] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_EDIT_ID)] = 0,
    subject: Annotated[
        str | None, Query(max_length=500, description="only edits whose subject contains this (case-insensitive)")
    ] = None,
    shown: Annotated[
        str | None,
        Query(
            max_length=32,
            description="true: edits whose prompt's answer showed target_new; false: did not; unchecked: not checked",
        ),
    ] = None,
):
    if limit is None:
        limit = min(50, ctx.config.max_page_size)
    if limit > ctx.config.max_page_size:
        raise Invalid(f"limit is {limit}; the bound is {ctx.config.max_page_size}")
    rows, total = service.list_page(ctx.sessions, status, limit, offset, subject, shown)
    return EditPage(items=[_out(e) for e in rows], total=total, limit=limit, offset=offset)


@router.get("/{edit_id}", response_model=EditOut, summary="One edit")
def get_edit(ctx: Ctx, edit_id: Annotated[int, Path(ge=1)]):
    return _out(service.get(ctx.sessions, edit_id))


@router.post(
    "/{edit_id}/revert",
    status_code=202,
    response_model=EditOut,
    dependencies=[Depends(require_api_key)],
    summary="Undo one applied edit (409 if not applied)",
)
def revert_edit(ctx: Ctx, edit_id: Annotated[int, Path(ge=1)]):
    return _out(service.request_revert(ctx.sessions, ctx.queue, edit_id))

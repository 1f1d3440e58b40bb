"""The operator dashboard: /ui (edit log, worker, queue, charts, submit form), /ui/edits/{id} (one
edit, its answer before and now, revert). Server-rendered HTML, no JavaScript, works offline.

Thin: each route parses the request, calls app/api/dashboard.py (which gathers the view from
the same service functions as the JSON API) and renders a template (app/api/templates, autoescaped).
The two forms that change something (submit, revert) are POSTs that carry the API key when one is
configured, checked as the JSON API checks its header (deps.check_api_key); the key is never shown
again, put in a URL or a cookie.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from app.api import dashboard
from app.api.deps import Ctx, Form, check_api_key, validate
from app.api.schemas import EditIn
from app.service.errors import ServiceError
from app.store.models import MAX_EDIT_ID

HERE = Path(__file__).resolve().parents[1]
# autoescape on for every template: whatever a client wrote is shown as text.
templates = Jinja2Templates(
    env=Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
)
CSS = (HERE / "static" / "kedit.css").read_text(encoding="utf-8")
# The pages hold no script at all; say so to the browser too.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
KEY_MISSING = "this form needs the API key: type it into the API key field"

router = APIRouter(prefix="/ui", tags=["dashboard"], include_in_schema=False)
root = APIRouter(include_in_schema=False)


@root.get("/")
def front():
    """A person who opens the server's address gets the dashboard (or the start-up page)."""
    return RedirectResponse("/ui", status_code=307)


def _page(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code, headers=HEADERS)


def _error(request: Request, exc: ServiceError) -> HTMLResponse:
    return _page(request, "error.html", exc.status_code, message=exc.message, code=exc.status_code)


def refusal_page(request: Request, message: str) -> HTMLResponse:
    """A form refused before it was read (posted from another site: app/api/origin.py)."""
    return _page(request, "error.html", 403, message=message, code=403)


def _key(ctx, form: dict[str, str]) -> None:
    given = form.get("api_key") or None
    check_api_key(ctx.config.api_key, None if given is None else given.encode("utf-8"), KEY_MISSING)


@router.get("", response_class=HTMLResponse)
def home(
    request: Request,
    ctx: Ctx,
    status: Annotated[str, Query(max_length=32)] = "",
    subject: Annotated[str, Query(max_length=500)] = "",
    offset: Annotated[int, Query(ge=0, le=MAX_EDIT_ID)] = 0,
    shown: Annotated[str, Query(max_length=32)] = "",
):
    starting = dashboard.startup_view(ctx)
    if starting is not None:
        # 503 with Retry-After, as the JSON routes answer meanwhile; the page reloads itself.
        page = _page(request, "starting.html", 503, v=starting)
        if starting.error is None:
            page.headers["Retry-After"] = str(starting.refresh_s)
        return page
    view = dashboard.home(ctx, status, subject, offset, shown)
    return _page(request, "home.html", 422 if view.error else 200, v=view)


@router.get("/submit", response_class=HTMLResponse)
def submit_form(request: Request, ctx: Ctx):
    return _page(request, "submit.html", v=dashboard.submit_page(ctx))


@router.post("/submit")
def submit(request: Request, ctx: Ctx, form: Form):
    fields = ("prompt", "subject", "target_new", "target_true", "question")
    typed = dashboard.FactForm(**{k: form.get(k, "") for k in fields})
    fact = {k: v for k, v in vars(typed).items() if k != "error" and not (k in ("target_true", "question") and v == "")}
    try:
        _key(ctx, form)
        checked = validate(EditIn, fact, ctx, ("form",))
        edit_id, before = dashboard.submit_fact(ctx, checked.model_dump())
    except ServiceError as e:
        typed.error = e.message
        return _page(request, "submit.html", e.status_code, v=dashboard.submit_page(ctx, typed))
    query = urlencode({"before": before.text}) if before.text is not None else ""
    return RedirectResponse(f"/ui/edits/{edit_id}" + (f"?{query}" if query else ""), status_code=303)


@router.get("/edits/{edit_id}", response_class=HTMLResponse)
def edit(
    request: Request,
    ctx: Ctx,
    edit_id: Annotated[int, PathParam()],
    before: Annotated[str | None, Query(max_length=4000)] = None,
):
    try:
        return _page(request, "edit.html", v=dashboard.edit_page(ctx, edit_id, before))
    except ServiceError as e:
        return _error(request, e)


@router.post("/edits/{edit_id}/revert")
def revert(request: Request, ctx: Ctx, edit_id: Annotated[int, PathParam()], form: Form):
    try:
        _key(ctx, form)
        dashboard.revert(ctx, edit_id)
    except ServiceError as e:
        try:
            return _page(request, "edit.html", e.status_code, v=dashboard.edit_page(ctx, edit_id, form_error=e.message))
        except ServiceError as missing:
            return _error(request, missing)
    return RedirectResponse(f"/ui/edits/{edit_id}", status_code=303)


@router.get("/kedit.css")
def css():
    return Response(CSS, media_type="text/css", headers={"Cache-Control": "max-age=300"})

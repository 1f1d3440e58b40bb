"""What each page of the operator dashboard (/ui) shows, gathered from the service functions the JSON
API uses (edits, quality, the model host, the generation engine). The routes (app/api/routes/ui.py)
only parse the request and render one of these views; the templates only lay them out.

Numbers are formatted here, charts drawn here (app/api/charts.py), so the templates hold no
logic. Text a client wrote (prompts, subjects, targets, errors) stays raw: the templates escape it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import urlencode

from app.api.charts import RefLine, Series, line_chart
from app.service import edits as edit_service
from app.service import quality
from app.service.context import ServiceContext
from app.service.errors import Invalid
from app.service.generation import Sampling
from app.service.startup import duration
from app.store import repo
from app.store.models import EDIT_STATUSES, Edit, text_problem

log = logging.getLogger(__name__)

PAGE_SIZE = 20
ANSWER_TOKENS = 12  # the "before" and "now" answers: greedy, this many new tokens
WAITING = ("queued", "applying")  # statuses whose page refreshes itself until they change


def _num(v: float | None, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}g}"


def _opt(v: object) -> str:
    return "—" if v is None else str(v)


# --- the start-up --------------------------------------------------------------------------------

STARTING_REFRESH_S = 3  # the start-up page reloads itself this often


@dataclass
class StartupView:
    """What /ui shows while the process starts (or why its start failed), in place of the dashboard."""

    stage: str
    part: str | None
    percent: str | None  # "41 %"; None for a stage that is not counted
    progress: float | None
    detail: str
    left: str | None  # "about 1 min 40 s left"
    error: str | None
    refresh_s: int = STARTING_REFRESH_S


def startup_view(ctx: ServiceContext) -> StartupView | None:
    """The start-up page's view while a start-up stage runs or after it failed; None once serving."""
    if ctx.startup.serving:
        return None
    now = ctx.startup.snapshot()
    return StartupView(
        stage=now["stage"],
        part=now["part"],
        percent=None if now["progress"] is None else f"{100 * now['progress']:.0f} %",
        progress=now["progress"],
        detail=now["detail"],
        left=None if now["seconds_left"] is None else f"about {duration(now['seconds_left'])} left",
        error=now["error"],
    )


# --- the pieces ----------------------------------------------------------------------------------


@dataclass
class WorkerState:
    state: str  # "active", "standing by", "in another process"
    last_error: str | None


def worker_state(ctx: ServiceContext) -> WorkerState:
    w = ctx.worker
    if w is None:
        return WorkerState("in another process (this one serves the api only)", None)
    return WorkerState("active" if w.active else "standing by", w.last_error)


def queue_depth(ctx: ServiceContext) -> str:
    try:
        return str(ctx.queue.depth())
    except Exception as e:  # the queue being down is something to show, not a failed page
        log.warning("queue depth unavailable: %s", e)
        return "unavailable"


def served_version(ctx: ServiceContext) -> str:
    return "no model in this process" if ctx.host is None else str(ctx.host.version)


def key_load(ctx: ServiceContext) -> str | None:
    """'N applied edits over f key dimensions per layer: x edits per key dimension' (the numbers
    of GET /health/norms), None where this process holds no model."""
    if ctx.host is None:
        return None
    norms = ctx.host.current_norms()
    if not norms:
        return None
    with ctx.sessions() as session:
        applied = repo.status_counts(session).get("applied", 0)
    load = _num(norms[0].load(applied), 2)
    edits = "edit" if applied == 1 else "edits"
    return f"{applied:,} applied {edits} over {norms[0].key_dim:,} key dimensions per layer: {load} per dimension"


def norm_growth(ctx: ServiceContext) -> dict[int, list[tuple[int, float]]]:
    """Per edited layer, (version, ‖W−W₀‖/‖W₀‖) for the latest `norm_history` versions (the same
    numbers as GET /health/norms' history)."""
    with ctx.sessions() as session:
        history = repo.norm_history(session, ctx.config.norm_history)
    return {
        layer: [(h.version, h.delta_norm / h.base_norm if h.base_norm else 0.0) for h in rows]
        for layer, rows in sorted(history.items())
    }


def norm_chart(ctx: ServiceContext) -> str | None:
    """SVG: norm growth per layer against the version, and the alarm threshold; None before any edit."""
    growth = norm_growth(ctx)
    if not growth:
        return None
    series = [Series(f"layer {layer}", [(float(v), g) for v, g in pts]) for layer, pts in growth.items()]
    return line_chart(
        "Norm growth ‖W−W₀‖/‖W₀‖ per edited layer",
        "weights version",
        "growth",
        series,
        [RefLine("alarm threshold", ctx.config.norm_alarm_growth)],
        x_integer=True,
        chart_id="norms",
    )


@dataclass
class QualityView:
    enabled: bool
    policy: str
    thresholds: list[tuple[str, str]]
    charts: list[str]  # empty: no canary scores yet
    latest: list[tuple[str, str]]


def quality_view(ctx: ServiceContext) -> QualityView:
    r = quality.report(ctx.sessions, ctx.config)
    hist = r.history
    charts = []
    if hist:
        x = [float(q.live_edits) for q in hist]
        kept = [100.0 * q.facts_kept / q.facts_total if q.facts_total else 0.0 for q in hist]
        charts = [
            line_chart(
                "Canary facts kept (%)",
                "applied edits",
                "% kept",
                [Series("facts kept", list(zip(x, kept, strict=True)))],
                x_integer=True,
                chart_id="canary-facts",
            ),
            line_chart(
                "Held-out perplexity",
                "applied edits",
                "perplexity",
                [Series("perplexity", list(zip(x, [q.perplexity for q in hist], strict=True)))],
                y_from_zero=False,
                x_integer=True,
                chart_id="canary-ppl",
            ),
            line_chart(
                "Generation entropy",
                "applied edits",
                "n-gram entropy (bits ×100)",
                [Series("entropy", list(zip(x, [q.entropy for q in hist], strict=True)))],
                y_from_zero=False,
                x_integer=True,
                chart_id="canary-entropy",
            ),
        ]
    latest = []
    if r.latest is not None:
        q = r.latest
        verdict = (q.guard or {}).get("verdict")
        latest = [
            ("version", str(q.version)),
            ("applied edits", str(q.live_edits)),
            ("canary facts kept", f"{q.facts_kept} of {q.facts_total}"),
            ("perplexity", _num(q.perplexity)),
            ("entropy", _num(q.entropy)),
            ("guard verdict", _opt(verdict)),
        ]
    return QualityView(
        enabled=r.enabled,
        policy=r.policy,
        thresholds=[(k, _num(v)) for k, v in r.thresholds.items()],
        charts=charts,
        latest=latest,
    )


@dataclass
class Answer:
    text: str | None  # None: could not be generated (`problem` says why)
    version: int | None = None
    problem: str | None = None


def answer(ctx: ServiceContext, prompt: str, max_tokens: int = ANSWER_TOKENS) -> Answer:
    """The model's greedy continuation of `prompt` from the current weights, as GET /generate makes it."""
    host = ctx.host
    if host is None or ctx.generation is None:
        return Answer(None, problem="this process serves no model")
    if not host.healthy:
        return Answer(None, problem=host.problem or "the model is not ready yet")
    try:
        gen = ctx.generation.open_text(prompt, Sampling(max_tokens=max_tokens, temperature=0))
        return Answer(gen.text(), gen.version)
    except Exception as e:  # shown on the page; the edit's own data is still worth seeing
        log.warning("dashboard answer failed: %s", e)
        return Answer(None, problem=f"{type(e).__name__}: {e}")


def fill(prompt: str, subject: str) -> str:
    """The fact's prompt with the subject in its slot (as the editing core fills it)."""
    return prompt.replace("{}", subject, 1)


# --- the pages -----------------------------------------------------------------------------------


def _yes_no(v: bool | None) -> str:
    return "not checked" if v is None else "shown" if v else "not shown"


def verdict(e: Edit) -> str:
    """The status as a user reads it: an applied edit says whether its prompt's answer showed it
    ("applied, shown", "applied, not shown", "applied, not checked"); other statuses stand alone."""
    return f"applied, {_yes_no(e.shown)}" if e.status == "applied" else e.status


def shown_class(v: bool | None) -> str:
    return "unchecked" if v is None else "shown" if v else "not-shown"


@dataclass
class EditRow:
    id: int
    subject: str
    prompt: str
    target_new: str
    status: str
    version: str
    updated: str
    verdict: str  # "applied, shown" ...
    shown: str  # css class: shown, not-shown, unchecked
    question: str  # the question's verdict ("shown", "not shown", "not checked") or "—" without one


def _row(e: Edit) -> EditRow:
    return EditRow(
        e.id,
        e.subject,
        e.prompt,
        e.target_new,
        e.status,
        _opt(e.applied_version),
        e.updated_at.strftime("%Y-%m-%d %H:%M:%S") if e.updated_at else "—",
        verdict(e),
        shown_class(e.shown),
        "—" if e.question is None else _yes_no(e.question_shown),
    )


@dataclass
class FactForm:
    """The submit form's fields as the client typed them (re-shown after an error), never the key."""

    prompt: str = ""
    subject: str = ""
    target_new: str = ""
    target_true: str = ""
    question: str = ""
    error: str | None = None


SHOWN_CHOICES = (("", "all"), ("true", "shown"), ("false", "not shown"), ("unchecked", "not checked"))


@dataclass
class HomeView:
    status: str
    subject: str
    statuses: list[tuple[str, str, bool]]  # value, label, selected
    shown_choices: list[tuple[str, str, bool]]  # value, label, selected
    rows: list[EditRow]
    total: int
    shown: str  # "1–20 of 45"
    prev_query: str | None
    next_query: str | None
    worker: WorkerState
    queue_depth: str
    version: str
    norm_chart: str | None
    norm_threshold: str
    load: str | None
    quality: QualityView
    api_key_needed: bool
    form: FactForm = field(default_factory=FactForm)
    error: str | None = None


def home(ctx: ServiceContext, status: str = "", subject: str = "", offset: int = 0, shown: str = "") -> HomeView:
    """The edit log (filtered by status and by shown, searched by subject, a page at `offset`), the
    worker, the queue, the served version and the charts. A status or shown value that does not exist
    is reported (`error`)."""
    error = None
    status, only = status.strip(), shown.strip()
    wanted = None if status in ("", "all") else status
    if wanted is not None and wanted not in EDIT_STATUSES:
        error = f"status must be all or one of {', '.join(EDIT_STATUSES)} (got {status!r})"
        wanted, status = None, ""
    if subject and (problem := text_problem("subject", subject)):
        error, subject = f"the search {problem}", ""
    if only == "all":
        only = ""
    try:
        edit_service.shown_filter(only)
    except Invalid as e:
        error, only = e.message, ""
    limit = min(PAGE_SIZE, ctx.config.max_page_size)
    rows, total = edit_service.list_page(ctx.sessions, wanted, limit, offset, subject or None, only or None)

    def query(at: int) -> str:
        pairs = (("status", wanted or ""), ("shown", only), ("subject", subject), ("offset", at))
        return urlencode({k: v for k, v in pairs if v})

    shown = f"{offset + 1}–{offset + len(rows)} of {total}" if rows else f"none of {total}"
    return HomeView(
        status=wanted or "all",
        subject=subject,
        statuses=[(status, status, status == (wanted or "all")) for status in ("all", *EDIT_STATUSES)],
        shown_choices=[(value, label, value == only) for value, label in SHOWN_CHOICES],
        rows=[_row(e) for e in rows],
        total=total,
        shown=shown,
        prev_query=query(max(0, offset - limit)) if offset > 0 else None,
        next_query=query(offset + limit) if offset + limit < total else None,
        worker=worker_state(ctx),
        queue_depth=queue_depth(ctx),
        version=served_version(ctx),
        norm_chart=norm_chart(ctx),
        norm_threshold=_num(ctx.config.norm_alarm_growth),
        load=key_load(ctx),
        quality=quality_view(ctx),
        api_key_needed=bool(ctx.config.api_key),
        error=error,
    )


@dataclass
class SubmitView:
    """The submit form alone (/ui/submit)."""

    api_key_needed: bool
    form: FactForm = field(default_factory=FactForm)


def submit_page(ctx: ServiceContext, form: FactForm | None = None) -> SubmitView:
    return SubmitView(api_key_needed=bool(ctx.config.api_key), form=form or FactForm())


@dataclass
class EditView:
    id: int
    status: str
    prompt: str
    filled_prompt: str
    subject: str
    target_new: str
    target_true: str
    error: str | None
    details: list[tuple[str, str]]  # label, value (numbers and ids, formatted)
    guard: str
    verdict: str  # "applied, shown", "applied, not shown", ..., or the status
    shown: str  # css class
    check: list[tuple[str, str]]  # what the worker's check recorded: label, text
    before: str | None  # the answer before the edit, as the submit form saw it (from the query)
    now: Answer
    refresh: bool  # waiting for a status change: the page reloads itself
    can_revert: bool
    revert_pending: bool
    api_key_needed: bool
    form_error: str | None = None


def edit_page(ctx: ServiceContext, edit_id: int, before: str | None = None, form_error: str | None = None) -> EditView:
    """One edit, and the model's current answer to its prompt."""
    e = edit_service.get(ctx.sessions, edit_id)
    filled = fill(e.prompt, e.subject)
    pending = e.status == "applied" and bool(e.revert_requested)
    return EditView(
        id=e.id,
        status=e.status,
        prompt=e.prompt,
        filled_prompt=filled,
        subject=e.subject,
        target_new=e.target_new,
        target_true=_opt(e.target_true),
        error=e.error,
        details=[
            ("P(target_new) before", _num(e.prob_before)),
            ("P(target_new) after", _num(e.prob_after)),
            ("MPES steps", _opt(e.mpes_steps)),
            ("batch", _opt(e.batch_id)),
            ("applied in version", _opt(e.applied_version)),
            ("reverted in version", _opt(e.reverted_version)),
            ("seconds", _num(e.seconds, 3)),
            ("submitted", e.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
        ],
        guard=_opt(e.guard),
        verdict=verdict(e),
        shown=shown_class(e.shown),
        check=_check(e),
        before=before,
        now=answer(ctx, filled),
        refresh=e.status in WAITING or pending,
        can_revert=e.status == "applied" and not pending,
        revert_pending=pending,
        api_key_needed=bool(ctx.config.api_key),
        form_error=form_error,
    )


def _check(e: Edit) -> list[tuple[str, str]]:
    """The worker's shown / not-shown check of this edit, as recorded (empty before any check)."""
    rows = []
    if e.checked_version is not None:
        rows += [
            ("Checked at version", str(e.checked_version)),
            ("Checked", e.checked_at.strftime("%Y-%m-%d %H:%M:%S UTC") if e.checked_at else "—"),
            ("The prompt's answer (10 tokens)", e.answer or ""),
            ("Shows the new target", _yes_no(e.shown)),
        ]
    if e.question is not None:
        rows.append(("Question", e.question))
        if e.checked_version is not None:
            if e.question_problem:
                rows.append(("Question not asked", e.question_problem))
            else:
                rows += [
                    ("The chat answer (24 tokens)", e.question_answer or ""),
                    ("The chat answer shows the new target", _yes_no(e.question_shown)),
                ]
    return rows


def submit_fact(ctx: ServiceContext, fact: dict) -> tuple[int, Answer]:
    """The model's answer to the filled prompt first ("before"), then the fact submitted as POST
    /edits does (the fact is already validated by the caller, with the API's rule)."""
    before = answer(ctx, fill(fact["prompt"], fact["subject"]))
    rows, _ = edit_service.submit(ctx.sessions, ctx.queue, [fact], idempotency_window_s=ctx.config.idempotency_window_s)
    if not rows:
        raise Invalid("the fact was not accepted")
    return rows[0].id, before


def revert(ctx: ServiceContext, edit_id: int) -> None:
    edit_service.request_revert(ctx.sessions, ctx.queue, edit_id)

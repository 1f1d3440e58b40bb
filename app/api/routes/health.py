"""GET /health, /ready, /health/norms, /health/quality, /version, /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import Ctx, ready_host
from app.api.pools import run_in
from app.api.schemas import Health, LayerNormsOut, NormPoint, NormsOut, QualityOut, QualityPoint, Ready, VersionOut
from app.service import quality
from app.store import repo

router = APIRouter(tags=["health"])


# /health, /ready and /metrics never wait behind other work: /health runs on the event loop, the
# other two (which read the database and the queue) in the probes' own threads (app/api/pools.py).


@router.get("/health", response_model=Health, summary="Liveness")
async def health():
    return Health(status="ok")


@router.get(
    "/ready",
    response_model=Ready,
    summary="Readiness: model, database, queue; while starting, the stage and its progress",
    responses={503: {"model": Ready}},
)
async def ready(request: Request, ctx: Ctx):
    return await run_in(request.app.state.pools.probes, _ready, ctx)


def _ready(ctx) -> JSONResponse:
    startup = ctx.startup.snapshot()
    checks: dict[str, Any] = {
        "database": ctx.db_ok(),
        "queue": ctx.queue.ping(),
        "model": bool(ctx.host and ctx.host.healthy and ctx.startup.serving),
    }
    if ctx.host is not None and ctx.host.problem:
        checks["model_problem"] = ctx.host.problem
    if ctx.worker is not None:
        checks["worker_active"] = ctx.worker.active
        # False while the worker stands by, with KEDIT_CANARIES=false, or if the canaries could not be scored.
        checks["canaries_scored"] = bool(ctx.worker.guard and ctx.worker.guard.active)
    ok = checks["database"] and checks["queue"] and checks["model"]
    body = Ready(
        ready=ok,
        stage=startup["stage"],
        progress=startup["progress"],
        detail=startup["detail"],
        startup=startup,
        checks=checks,
    ).model_dump()
    headers = {"Retry-After": "5"} if ctx.startup.running else None
    return JSONResponse(body, status_code=200 if ok else 503, headers=headers)


@router.get("/health/norms", response_model=NormsOut, summary="Norms of the edited matrices over time")
def norms(ctx: Ctx):
    host = ready_host(ctx)
    host.sync()
    threshold = ctx.config.norm_alarm_growth
    with ctx.sessions() as session:
        history = repo.norm_history(session, ctx.config.norm_history)
        applied = repo.status_counts(session).get("applied", 0)
    layers = []
    for n in host.current_norms():
        layers.append(
            LayerNormsOut(
                layer=n.layer,
                weight_norm=n.weight_norm,
                base_norm=n.base_norm,
                delta_norm=n.delta_norm,
                growth=n.growth,
                load=n.load(applied),
                key_dim=n.key_dim,
                alarm=n.growth > threshold,
                history=[
                    NormPoint(
                        version=h.version,
                        weight_norm=h.weight_norm,
                        delta_norm=h.delta_norm,
                        growth=h.delta_norm / h.base_norm if h.base_norm else 0.0,
                    )
                    for h in history.get(n.layer, [])
                ],
            )
        )
    return NormsOut(
        version=host.version,
        applied_edits=applied,
        threshold=threshold,
        alarm=any(layer.alarm for layer in layers),
        layers=layers,
    )


@router.get(
    "/health/quality",
    response_model=QualityOut,
    summary="Canary scores: facts kept, held-out perplexity, generation entropy, guard decisions",
)
def quality_scores(ctx: Ctx):
    r = quality.report(ctx.sessions, ctx.config)
    point = lambda q: QualityPoint.model_validate(q) if q is not None else None  # noqa: E731
    return QualityOut(
        enabled=r.enabled,
        policy=r.policy,
        thresholds=r.thresholds,
        baseline=point(r.baseline),
        latest=point(r.latest),
        history=[point(q) for q in r.history],
    )


@router.get("/version", response_model=VersionOut, summary="The weights version this process serves")
def version(ctx: Ctx):
    host = ready_host(ctx)
    return VersionOut(
        version=host.version,
        head=host.head(),
        weights_hash=host.weights_hash,
        base_hash=host.base_hash,
        model=host.model_name,
        layers=host.layers,
        method=str(host.settings.get("method", "")),
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request, ctx: Ctx):
    text = await run_in(request.app.state.pools.probes, generate_latest, ctx.registry)
    return Response(text, media_type=CONTENT_TYPE_LATEST)

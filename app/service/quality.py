"""What the canaries say about the served weights: the read side of the quality guard.

The worker scores the canaries after every batch and revert and records the scores with the
version (app/service/guard.py); this module reads them back for `GET /health/quality`, the
Prometheus gauges and the operator dashboard, so all three show the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.config import ServiceConfig
from app.store import repo
from app.store.models import QualityScore


def thresholds(config: ServiceConfig) -> dict[str, float]:
    return {
        "facts_lost": config.guard_facts_lost,
        "facts_lost_total": config.guard_facts_lost_total,
        "ppl_rise": config.guard_ppl_rise,
        "ppl_rise_total": config.guard_ppl_rise_total,
        "entropy_drop": config.guard_entropy_drop,
        "entropy_drop_total": config.guard_entropy_drop_total,
    }


@dataclass
class QualityReport:
    enabled: bool
    policy: str
    thresholds: dict[str, float]
    baseline: QualityScore | None
    latest: QualityScore | None
    history: list[QualityScore] = field(default_factory=list)


def report(sessions, config: ServiceConfig, limit: int | None = None) -> QualityReport:
    """The unedited model's scores, the newest, and up to `limit` (default: norm_history) of the latest."""
    with sessions() as session:
        history = repo.quality_history(session, limit or config.norm_history)
        baseline = repo.quality_at(session, 0)
    return QualityReport(
        enabled=config.canaries,
        policy=config.guard if config.canaries else "off",
        thresholds=thresholds(config),
        baseline=baseline,
        latest=history[-1] if history else None,
        history=history,
    )

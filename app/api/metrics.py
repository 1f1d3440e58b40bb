"""Prometheus metrics. Counts that several processes share (edits by status, batch seconds, MPES
steps, norms) are read from the database at scrape time, so every replica reports the same
truth; the generate latency is this process's own."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily

from app.store import repo
from app.store.models import EDIT_STATUSES

log = logging.getLogger(__name__)


class LogCollector:
    def __init__(self, ctx) -> None:
        self.ctx = ctx

    def collect(self):
        ctx = self.ctx
        try:
            with ctx.sessions() as session:
                counts = repo.status_counts(session)
                n_batches, batch_total = repo.batch_stats(session)
                n_facts, steps_total = repo.mpes_stats(session)
                history = repo.norm_history(session, 1)
                head = repo.head_version_id(session)
                quality = repo.quality_history(session, 1)
                refused = repo.guard_refused_count(session)
                shown = repo.shown_counts(session)
        except Exception:
            log.exception("metrics: database unavailable")
            return
        edits = GaugeMetricFamily("kedit_edits", "edits in the log by status", labels=["status"])
        for st in EDIT_STATUSES:
            edits.add_metric([st], counts.get(st, 0))
        yield edits
        checked = GaugeMetricFamily(
            "kedit_applied_edits_shown",
            "applied edits by whether the greedy answer to their prompt (kind=prompt) or their chat question "
            "(kind=question, edits sent with one) showed target_new when the worker checked it",
            labels=["kind", "shown"],
        )
        for kind in ("prompt", "question"):
            for verdict, label in ((True, "true"), (False, "false"), (None, "unchecked")):
                checked.add_metric([kind, label], shown.get((kind, verdict), 0))
        yield checked
        yield SummaryMetricFamily(
            "kedit_batch_seconds", "editor seconds per applied batch", count_value=n_batches, sum_value=batch_total
        )
        yield SummaryMetricFamily(
            "kedit_mpes_steps", "optimisation steps per applied fact", count_value=n_facts, sum_value=steps_total
        )
        growth = GaugeMetricFamily("kedit_norm_growth", "‖W−W0‖F / ‖W0‖F per edited layer", labels=["layer"])
        delta = GaugeMetricFamily("kedit_delta_norm", "‖W−W0‖F per edited layer", labels=["layer"])
        for layer, snaps in sorted(history.items()):
            last = snaps[-1]
            growth.add_metric([str(layer)], last.delta_norm / last.base_norm if last.base_norm else 0.0)
            delta.add_metric([str(layer)], last.delta_norm)
        yield growth
        yield delta
        yield GaugeMetricFamily("kedit_head_version", "newest version in the log", value=head)
        if quality:
            q = quality[-1]
            for name, doc, value in (
                ("kedit_canary_facts_total", "canary facts (answered top-1 by the unedited model)", q.facts_total),
                (
                    "kedit_canary_facts_kept",
                    "canary facts the newest version still answers as the unedited model",
                    q.facts_kept,
                ),
                (
                    "kedit_canary_perplexity",
                    "perplexity of the newest version on the held-out canary text",
                    q.perplexity,
                ),
                ("kedit_canary_entropy", "n-gram entropy (×100) of the newest version's greedy generation", q.entropy),
                ("kedit_canary_version", "the version the canary gauges are of", q.version),
            ):
                yield GaugeMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(
            "kedit_guard_refused_edits", "edits the quality guard refused (policy reject)", value=refused
        )
        if ctx.host is not None:
            yield GaugeMetricFamily(
                "kedit_served_version", "weights version this process serves", value=ctx.host.version
            )
        try:
            depth = ctx.queue.depth()
        except Exception:
            return
        yield GaugeMetricFamily("kedit_queue_depth", "queue entries not yet acknowledged", value=depth)


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry, ctx) -> None:
        registry.register(LogCollector(ctx))
        self.generate_seconds = Histogram(
            "kedit_generate_seconds",
            "latency of /generate in this process",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=registry,
        )

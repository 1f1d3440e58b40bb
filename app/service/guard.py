"""The quality guard: the canaries scored after every change of the weights, and what happens to
a batch that crosses a threshold (docs/quality.md).

The worker owns one Guard. It chooses the canaries once per log, from the unedited weights,
and scores them with the weights of every new version before that version is committed; the
scores go into the same transaction as the version. The policy decides what a batch that crosses
a threshold gets:
- off: nothing (the scores are still recorded);
- warn: applied, and every edit of the batch is marked with what the batch broke;
- reject: the edits responsible are found by splitting the batch (each half applied on this
  worker's weights from the facts' z*, no new optimisation) and fail with the reason; the others
  are committed as the batch. Nothing of this reaches other processes before the commit.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError

from app.config import ServiceConfig
from app.editing.model import LoweredCopy, reading_dtype
from app.editing.progress import Cancelled
from app.editing.prompts import decode_text
from app.editing.reading import target_probabilities
from app.editing.types import BatchResult, EditOutcome, EditRequest, LayerDelta, join_deltas
from app.eval import canaries as probes
from app.service import faults
from app.service.host import ModelHost
from app.service.quality import thresholds
from app.store import repo
from app.store.db import transaction
from app.store.models import Canary, QualityScore

log = logging.getLogger(__name__)

SHOWN_FACTS = 3  # lost facts named in one reason; the rest are counted


@dataclass
class Judgement:
    crossed: list[str]  # one sentence per threshold crossed

    def __bool__(self) -> bool:
        return bool(self.crossed)

    @property
    def reason(self) -> str:
        return "; ".join(self.crossed)


@dataclass
class Guarded:
    """What a guarded batch comes to: the result to commit (None: every edit refused), its scores,
    and the refused edits (index in the batch → reason)."""

    result: BatchResult | None
    scores: probes.Scores | None
    judgement: Judgement
    rejected: dict[int, str] = field(default_factory=dict)


class Guard:
    def __init__(self, config: ServiceConfig, host: ModelHost):
        self.config = config
        self.host = host
        self.policy = config.guard
        self.limits = thresholds(config)
        self.set: probes.CanarySet | None = None
        self.baseline: QualityScore | None = None
        self._copy: LoweredCopy | None = None  # made on first use: a worker without canaries needs none

    @property
    def model(self):
        """The model the canaries read: a copy in `canary_dtype` whose edited layers are the worker's now."""
        if self._copy is None:
            lm = self.host.editor.lm
            self._copy = LoweredCopy(lm, self.host.layers, reading_dtype(self.config.canary_dtype, str(lm.device)))
        self._copy.refresh()
        return self._copy.model

    # --- the canaries of this log -------------------------------------------------------------

    @contextmanager
    def stoppable(self, stop: threading.Event | None):
        """While inside, every forward pass of the canary model first checks `stop` and raises
        Cancelled once it is set: choosing and scoring the canaries takes seconds to minutes, and a
        process asked to stop must not wait for it. Nothing is recorded before a step finishes."""
        if stop is None:
            yield
            return

        def check(*_):
            if stop.is_set():
                raise Cancelled("stopped on request")

        handle = self.model.base_model.register_forward_pre_hook(check)
        try:
            yield
        finally:
            handle.remove()

    def ensure(self, stop: threading.Event | None = None) -> None:
        """Load the log's canaries, or choose and record them (first start of a log); score the
        unedited model and the head version where they have no score yet. Called by the worker
        once it holds the writer lock; `stop` set ends it at its next forward pass (Cancelled)."""
        with self.stoppable(stop):
            self._ensure()

    def _ensure(self) -> None:
        with self.host.sessions() as session:
            rows = repo.canaries(session)
        if not rows:
            self._choose()
            with self.host.sessions() as session:
                rows = repo.canaries(session)
        self.set = probes.CanarySet(
            facts=[
                probes.CanaryFact(r.id, r.text, r.expected or "", r.token_id or 0, r.subject or "", r.relation or "")
                for r in rows
                if r.kind == "fact"
            ],
            text="".join(r.text for r in rows if r.kind == "text"),
            prompts=[r.text for r in rows if r.kind == "prompt"],
        )
        with self.host.sessions() as session:
            self.baseline = repo.quality_at(session, 0)
            head = repo.head_version_id(session)
            head_scored = head == 0 or repo.quality_at(session, head) is not None
        if self.baseline is None:
            with self.host.writing(), self.host.editor.base_weights():
                scores = self.score()
            with transaction(self.host.sessions) as session:
                self.baseline = self.row(session, 0, scores, None, live_edits=0)
                repo.put_quality(session, self.baseline)
            log.info(
                "canaries: %d facts, %d prompts; unedited perplexity %.2f, entropy %.1f (%.1f s)",
                len(self.set.facts),
                len(self.set.prompts),
                scores.perplexity,
                scores.entropy,
                scores.seconds,
            )
        if not head_scored:
            with self.host.writing():
                scores = self.score()
            with transaction(self.host.sessions) as session:
                repo.put_quality(session, self.row(session, head, scores, None))

    def _choose(self) -> None:
        """The canaries of this log, from the bundled candidates, on the unedited weights."""
        lm, c = self.host.editor.lm, self.config
        with self.host.writing(), self.host.editor.base_weights():
            chosen = probes.choose(self.model, lm.tokenizer, c.canary_facts, c.canary_text_tokens, c.canary_prompts)
        rows = [
            Canary(
                id=f.id,
                kind="fact",
                text=f.text,
                subject=f.subject,
                expected=f.expected,
                token_id=f.token_id,
                relation=f.relation[:64],
            )
            for f in chosen.facts
        ]
        n = len(rows)
        rows.append(Canary(id=n + 1, kind="text", text=chosen.text))
        rows += [Canary(id=n + 2 + i, kind="prompt", text=p) for i, p in enumerate(chosen.prompts)]
        try:
            with transaction(self.host.sessions) as session:
                repo.put_canaries(session, rows)
        except IntegrityError:  # another writer recorded them first: theirs are the log's
            log.info("the canaries were chosen by another process; using those")

    # --- scoring and judging ------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.set is not None

    @property
    def canaries(self) -> probes.CanarySet:
        """The canary set of an active guard (scoring is only asked of one)."""
        if self.set is None:
            raise RuntimeError("the guard has no canaries: scoring needs an active guard")
        return self.set

    def score(self) -> probes.Scores:
        """The canaries on the weights as they are now (the caller holds the write side)."""
        return probes.score(self.model, self.host.editor.lm.tokenizer, self.canaries, self.config.canary_gen_tokens)

    def lost_facts(self, scores: probes.Scores) -> list[dict]:
        tok = self.host.editor.lm.tokenizer
        return [
            {"canary": f.id, "prompt": f.text, "expected": f.expected, "now": decode_text(tok, [a]).strip()}
            for f, a in zip(self.canaries.facts, scores.answers, strict=True)
            if a != f.token_id
        ]

    def row(
        self, session, version: int, scores: probes.Scores, decision: dict | None, live_edits: int | None = None
    ) -> QualityScore:
        lost = self.lost_facts(scores)
        total = len(self.canaries.facts)
        live = repo.live_edit_count(session) if live_edits is None else live_edits
        return QualityScore(
            version=version,
            live_edits=live,
            facts_total=total,
            facts_kept=total - len(lost),
            lost=lost,
            perplexity=scores.perplexity,
            entropy=scores.entropy,
            seconds=scores.seconds,
            guard=decision,
        )

    def previous(self, version: int) -> QualityScore | None:
        with self.host.sessions() as session:
            return repo.quality_at(session, version - 1) or self.baseline

    def judge(self, scores: probes.Scores, previous: QualityScore | None) -> Judgement:
        """The thresholds these scores cross, against the previous version and the unedited model.
        A bound on the whole drift (vs unedited) is charged to the change that crosses it."""
        lim, base = self.limits, self.baseline
        crossed: list[str] = []
        lost = self.lost_facts(scores)
        before = {d["canary"] for d in (previous.lost if previous is not None else [])}
        newly = [d for d in lost if d["canary"] not in before]
        if len(newly) > lim["facts_lost"]:
            named = "; ".join(
                f"would change '{d['prompt']}' from {d['expected']} to {d['now']}" for d in newly[:SHOWN_FACTS]
            )
            more = f" (and {len(newly) - SHOWN_FACTS} more canary facts)" if len(newly) > SHOWN_FACTS else ""
            crossed.append(named + more)
        total = len(self.canaries.facts)
        if total and previous is not None:
            share, share_before = len(lost) / total, len(previous.lost) / total
            if share > lim["facts_lost_total"] >= share_before:
                crossed.append(
                    f"would leave {total - len(lost)} of {total} canary facts answered as the unedited "
                    f"model did (bound: {lim['facts_lost_total']:.0%} lost)"
                )
        if previous is not None and base is not None:
            for name, now, prev, unedited, step, drift, sign in (
                (
                    "held-out perplexity",
                    scores.perplexity,
                    previous.perplexity,
                    base.perplexity,
                    lim["ppl_rise"],
                    lim["ppl_rise_total"],
                    1,
                ),
                (
                    "generation entropy",
                    scores.entropy,
                    previous.entropy,
                    base.entropy,
                    lim["entropy_drop"],
                    lim["entropy_drop_total"],
                    -1,
                ),
            ):
                change = sign * (now / prev - 1) if prev else 0.0
                total_change = sign * (now / unedited - 1) if unedited else 0.0
                total_before = sign * (prev / unedited - 1) if unedited else 0.0
                verb = "raise" if sign > 0 else "lower"
                if change > step:
                    crossed.append(
                        f"would {verb} {name} from {prev:.2f} to {now:.2f} ({change:+.1%} in one "
                        f"batch; bound {step:.0%})".replace("+-", "-")
                    )
                elif total_change > drift >= total_before:
                    crossed.append(
                        f"would {verb} {name} to {now:.2f}, {total_change:.1%} from the unedited "
                        f"model's {unedited:.2f} (bound {drift:.0%})"
                    )
        return Judgement(crossed)

    # --- reject: find the edits responsible -----------------------------------------------------

    def bisect(
        self,
        point: dict,
        requests: list[EditRequest],
        first: BatchResult,
        batch_id: int,
        previous: QualityScore | None,
        first_judgement: Judgement,
    ) -> Guarded:
        """The batch as a whole crossed a threshold: find the facts responsible and commit the rest.

        Group testing from the weights before the batch (`point`): a group is written from its
        facts' z* (no new optimisation) and judged; a group that crosses is split in halves, down
        to single facts, which are refused with the reason. The others are then written together as
        the batch. Should they still cross together (facts that only harm in company), they are
        admitted group by group on top of each other instead, and the admitted groups' factors
        together are the batch."""
        editor = self.host.editor
        z = [o.z_star for o in first.outcomes]
        trial = [-1]  # trial batch ids: negative, never recorded

        def write(group: list[int]) -> BatchResult:
            faults.point("worker_guard_bisect")
            res = editor.reapply([requests[i] for i in group], [z[i] for i in group], trial[0])
            trial[0] -= 1
            return res

        def culprits(group: list[int], into: dict[int, str]) -> None:
            editor.restore(point)
            write(group)
            j = self.judge(self.score(), previous)
            editor.restore(point)
            if not j:
                return
            if len(group) == 1:
                into[group[0]] = j.reason
                return
            half = len(group) // 2
            culprits(group[:half], into)
            culprits(group[half:], into)

        n = len(requests)
        rejected: dict[int, str] = {}
        if n == 1:  # the batch was judged already: its one fact is the culprit
            rejected[0] = first_judgement.reason
        else:
            culprits(list(range(n // 2)), rejected)
            culprits(list(range(n // 2, n)), rejected)
        rest = [i for i in range(n) if i not in rejected]
        if not rest:
            editor.restore(point)
            return Guarded(None, None, Judgement([]), rejected)
        editor.restore(point)
        res = editor.reapply([requests[i] for i in rest], [z[i] for i in rest], batch_id)
        scores = self.score()
        judgement = self.judge(scores, previous)
        if not judgement:
            return Guarded(self._result(res, first, rest, requests), scores, judgement, rejected)
        return self._admit_in_turn(point, requests, first, batch_id, previous, rest, rejected, write)

    def _admit_in_turn(self, point, requests, first, batch_id, previous, rest, rejected, write) -> Guarded:
        editor = self.host.editor
        editor.restore(point)
        admitted: list[tuple[list[int], list[LayerDelta]]] = []

        def admit(group: list[int]) -> None:
            here = editor.save_point()
            res = write(group)
            j = self.judge(self.score(), previous)
            if not j:
                admitted.append((group, res.deltas))
                return
            editor.restore(here)
            if len(group) == 1:
                rejected[group[0]] = j.reason
                return
            half = len(group) // 2
            admit(group[:half])
            admit(group[half:])

        admit(rest[: len(rest) // 2] or rest)
        if len(rest) > 1:
            admit(rest[len(rest) // 2 :])
        editor.restore(point)
        if not admitted:
            return Guarded(None, None, Judgement([]), rejected)
        order = [i for group, _ in admitted for i in group]
        deltas = [join_deltas([d[k] for _, d in admitted]) for k in range(len(editor.layers))]
        editor.add_batch(batch_id, deltas)  # one addition per layer: the bits a replay of the log gives
        res = BatchResult(batch_id, deltas, [])
        scores = self.score()
        return Guarded(self._result(res, first, order, requests), scores, self.judge(scores, previous), rejected)

    def _result(
        self, res: BatchResult, first: BatchResult, order: list[int], requests: list[EditRequest]
    ) -> BatchResult:
        """The committed batch, its outcomes in `order` with what the first (full) run measured."""
        after = target_probabilities(self.host.editor.lm, [requests[i] for i in order])
        outcomes = [
            EditOutcome(first.outcomes[i].z_star, first.outcomes[i].mpes_steps, first.outcomes[i].prob_before, after[k])
            for k, i in enumerate(order)
        ]
        return BatchResult(
            res.batch_id,
            res.deltas,
            outcomes,
            z_seconds=first.z_seconds,
            solve_seconds=first.solve_seconds,
            keys_seconds=first.keys_seconds,
            extra={"order": order},
        )

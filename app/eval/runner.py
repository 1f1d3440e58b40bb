"""The sequential-editing evaluation: edit N records in batches of B on one model, score.

Protocol (docs/method.md §5): the batches are applied one after another to the same model;
the unedited model is scored on the same records first (baseline); every
`checkpoint_every` batches the facts edited so far (or a fixed sample of them) are
scored together with model health, and the run's state is saved so it can be resumed;
at the end every edited fact is scored. Timings and weight norms are kept per batch.
Beside the teacher-forced scores, the same points report what a user reads: the model's greedy
answers to the prompts, a chat question, neighbourhood and generic prompts (app/eval/answer_scores.py).

Use it as a library (`run_eval`) or through `kedit eval` (app/cli/evaluation.py).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeGuard

import torch
from tqdm.auto import tqdm

from app.editing.answers import has_chat_template
from app.editing.build import Role, build_editor
from app.editing.settings import differences
from app.eval import answer_scores, scoring
from app.eval.checkpoint import FINAL_DIR, checkpoint_batches, load_checkpoint, load_trail, save_checkpoint, save_trail
from app.eval.data import CounterFactRecord, Record, ZsreRecord
from app.eval.health import HealthConfig, measure_health
from app.eval.metrics import harmonic_mean, mean_ngram_entropy

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"


class RunInterrupted(Exception):
    """Raised by `stop_after_batches` (tests, and a clean way to stop a long run)."""


@dataclass
class RunOptions:
    """How the evaluation is run (not how edits are made: that is EditSettings)."""

    batch_size: int
    checkpoint_every: int | None = None  # batches between checkpoints (scores + saved state)
    checkpoint_sample: int | None = None  # score at most this many edited facts at a checkpoint
    generation_samples: int = 50  # CounterFact GE: texts generated from the records' generation prompts
    gen_max_len: int = 100  # tokens per generated text, prompt included (the reference's 100)
    score_batch_size: int = 32  # sequences per forward pass when scoring
    health: HealthConfig | None = field(default_factory=HealthConfig)  # None: skip perplexity/generation entropy
    seed: int = 0
    progress: bool = False  # bars for long scoring passes (set by run_eval from its `progress`)
    log_lines: bool = False  # without bars: a plain line per stage, batch and checkpoint (for a log file)
    answer_metrics: bool = True  # greedy answers: generation / chat efficacy, leak, kept, drift


# --- scoring a set of records ------------------------------------------------------------


def _all_counterfact(records: Sequence[Record]) -> TypeGuard[Sequence[CounterFactRecord]]:
    return all(isinstance(r, CounterFactRecord) for r in records)


def _all_zsre(records: Sequence[Record]) -> TypeGuard[Sequence[ZsreRecord]]:
    return all(isinstance(r, ZsreRecord) for r in records)


def _kind(records: Sequence[Record]) -> str:
    if _all_counterfact(records):
        return "counterfact"
    if _all_zsre(records):
        return "zsre"
    raise TypeError("records must be all CounterFact or all zsRE")


def _details(
    lm,
    records: Sequence[Record],
    opts: RunOptions,
    ref_loc: dict | None = None,
    label: str | None = None,
    ref_neighbours: Sequence[Sequence[str]] | None = None,
    timer: list[float] | None = None,
    reference: bool = False,
) -> list[dict]:
    """Per record: the teacher-forced scores, then (with `opts.answer_metrics`) the answer metrics,
    leak and kept against `ref_neighbours` (the unedited model's neighbourhood answers, per record).
    `reference`: these are the unedited model's answers; they are their own reference and are kept
    (`nb_answers`). The seconds spent on answers are added to `timer[0]`."""
    label = label if opts.progress else None
    if _all_counterfact(records):
        details = scoring.counterfact_record_details(
            lm.model, lm.tokenizer, records, opts.score_batch_size, progress=label
        )
    elif _all_zsre(records):
        details = scoring.zsre_record_details(
            lm.model, lm.tokenizer, records, opts.score_batch_size, ref_loc, progress=label
        )
    else:
        raise TypeError("records must be all CounterFact or all zsRE")
    if opts.answer_metrics:
        t0 = time.perf_counter()
        for d, a in zip(details, _answer_details(lm, records, opts, ref_neighbours, reference), strict=True):
            d.update(a)
        if timer is not None:
            timer[0] += time.perf_counter() - t0
    return details


def _answer_details(
    lm, records: Sequence[Record], opts: RunOptions, ref_neighbours: Sequence[Sequence[str]] | None, reference: bool
) -> list[dict]:
    probes = [answer_scores.probe_of(r) for r in records]
    answers = answer_scores.collect_answers(lm.model, lm.tokenizer, probes, opts.score_batch_size)
    refs = ref_neighbours if ref_neighbours is not None else [None] * len(records)
    out = []
    for probe, a, ref in zip(probes, answers, refs, strict=True):
        d = answer_scores.record_details(probe, a, a.neighbours if reference else ref)
        if reference:
            d["nb_answers"] = list(a.neighbours)
        out.append(d)
    return out


def _answer_baseline_for(lm, records: Sequence[Record], opts: RunOptions, state: RunState) -> None:
    """A run saved before the answer metrics existed has no unedited answers: take them now, from
    the freshly loaded model, before its saved edits are written back."""
    if not opts.answer_metrics or (state.drift_reference and all("nb_answers" in d for d in state.baseline_details)):
        return
    _say(opts, "the saved run has no unedited answers: asking the unedited model …")
    t0 = time.perf_counter()
    for d, a in zip(state.baseline_details, _answer_details(lm, records, opts, None, reference=True), strict=True):
        d.update({k: v for k, v in a.items() if k not in _TEXTS})
    state.answer_seconds += time.perf_counter() - t0
    _drift_baseline(lm, opts, state)
    state.baseline.update(answer_scores.aggregate(state.baseline_details))
    state.baseline["drift"] = 0.0


def _aggregate(kind: str, details: Sequence[dict]) -> dict[str, float | None]:
    out: dict[str, float | None]
    if kind == "counterfact":
        scores = {k: 100.0 * sum(d[k] for d in details) / len(details) for k in ("es", "ps", "ns")}
        out = {**scores, "s": harmonic_mean([scores["es"], scores["ps"], scores["ns"]])}
    else:
        out = dict(scoring.aggregate_zsre(details))
    if details and "gen_es" in details[0]:
        out.update(answer_scores.aggregate(details))
    return out


def _drift(lm, opts: RunOptions, state: RunState) -> float | None:
    """Drift of the model as it is now from the unedited model's answers (None without answer metrics)."""
    if not opts.answer_metrics or not state.drift_reference:
        return None
    t0 = time.perf_counter()
    answers = answer_scores.drift_answers(lm.model, lm.tokenizer, opts.score_batch_size)
    state.answer_seconds += time.perf_counter() - t0
    return answer_scores.drift(answers, state.drift_reference)


def _live_score(lm, records: Sequence[Record], opts: RunOptions) -> float:
    """ES (CounterFact) or edit accuracy (zsRE) of the batch just written: cheap, for the progress bar."""
    if _all_counterfact(records):
        return scoring.rewrite_success(lm.model, lm.tokenizer, records, opts.score_batch_size)
    if not _all_zsre(records):
        raise TypeError("records must be all CounterFact or all zsRE")
    pairs = [(r.question, r.target) for r in records]
    res = scoring.teacher_force(lm.model, lm.tokenizer, pairs, opts.score_batch_size)
    return 100.0 * sum(t.accuracy for t in res) / len(res)


def _generation_prompts(records: Sequence[Record], opts: RunOptions) -> list[str]:
    if _all_counterfact(records):
        return scoring.counterfact_generation_prompts(records, opts.generation_samples)
    return []


def _ge(lm, prompts: list[str], health: dict | None, opts: RunOptions) -> tuple[float | None, str]:
    """GE from the records' generation prompts; files without any (compact CounterFact,
    zsRE) use the fixed health prompts instead, and the summary says which."""
    if prompts:
        texts = scoring.generate_texts(lm.model, lm.tokenizer, prompts, max_len=opts.gen_max_len, seed=opts.seed)
        return mean_ngram_entropy(texts), "generation_prompts"
    if health is not None:
        return health["gen_entropy"], "health_prompts"
    return None, "none"


def _sample_indices(n_edited: int, n_total: int, sample: int | None, seed: int) -> list[int]:
    """A fixed sample: one seeded permutation of all records, filtered to those edited so far,
    so the same facts are followed from checkpoint to checkpoint."""
    if sample is None or sample >= n_edited:
        return list(range(n_edited))
    perm = random.Random(seed).sample(range(n_total), n_total)
    return sorted([i for i in perm if i < n_edited][:sample])


# --- progress state (what a checkpoint holds besides the editor) -------------------------


@dataclass
class RunState:
    n_records: int
    batch_size: int
    batches_done: int = 0
    batches: list[dict] = field(default_factory=list)  # per batch: edits, seconds, z/solve seconds, live score
    norms: dict[str, list[dict]] = field(default_factory=dict)  # per layer, per batch
    checkpoints: list[dict] = field(default_factory=list)
    baseline: dict = field(default_factory=dict)
    baseline_details: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0  # time spent in this run so far (all sittings)
    first_batch_id: int = 0  # above the batch ids of an earlier run this one continues (`start_state`)
    prior_edits: int = 0  # edits already in the model when this run started
    drift_reference: list[str] = field(default_factory=list)  # the unedited model's answers to DRIFT_PROMPTS
    answer_seconds: float = 0.0  # time spent on the answer metrics (all sittings)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> RunState:
        return cls(**d)


def _ref_loc(state: RunState, records: Sequence[Record]) -> dict | None:
    if _kind(records) != "zsre":
        return None
    return {r.case_id: d["loc_argmax"] for r, d in zip(records, state.baseline_details, strict=True)}


_PRIVATE = ("loc_argmax", "nb_answers")  # references kept for comparison, not results


def _public(details_scores: dict) -> dict:
    return {k: v for k, v in details_scores.items() if k not in _PRIVATE}


def _ref_neighbours(state: RunState, idx: Sequence[int]) -> list[list[str]] | None:
    rows: list[list[str] | None] = [state.baseline_details[i].get("nb_answers") for i in idx]
    present = [r for r in rows if r is not None]
    return present if len(present) == len(rows) else None


def _say(opts: RunOptions, msg: str) -> None:
    if opts.progress or opts.log_lines:
        tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()


def _log_batch(opts: RunOptions, state: RunState, n_batches: int, live_name: str) -> None:
    """The plain line of a batch just written (the bar's postfix, for a log that has no bar)."""
    if opts.progress or not opts.log_lines:
        return
    row = state.batches[-1]
    growth = max(((rows[-1]["growth"], layer) for layer, rows in state.norms.items() if rows), default=None)
    steps = f", {row['mean_steps']:.1f} steps" if row["mean_steps"] is not None else ""
    grown = f", largest ‖W−W₀‖/‖W₀‖ {100 * growth[0]:.0f} % (layer {growth[1]})" if growth else ""
    _say(
        opts,
        f"batch {state.batches_done}/{n_batches}: {row['edits']} edits in {row['seconds']:.0f} s "
        f"({row['seconds'] / row['edits']:.2f} s/edit{steps}), {live_name} {row['live_score']:.0f}{grown}",
    )


def _log_checkpoint(opts: RunOptions, entry: dict) -> None:
    sc, base = entry["scores"], entry["baseline"]
    parts = [f"{k.upper()} {sc[k]:.1f} (unedited {base[k]:.1f})" for k in ("es", "ps", "ns", "edit_acc") if k in sc]
    for key, name in (("gen_es", "gen ES"), ("chat_es", "chat ES")):
        if sc.get(key) is not None:
            parts.append(f"{name} {sc[key]:.1f} (unedited {base[key]:.1f})")
    if sc.get("drift") is not None:
        parts.append(f"drift {sc['drift']:.0f}")
    health = entry.get("health") or {}
    if "perplexity" in health:
        parts.append(f"perplexity {health['perplexity']:.2f}")
    _say(opts, f"checkpoint at {entry['edits']} edits ({entry['scored']} facts scored): " + ", ".join(parts))


def _baseline(lm, records: Sequence[Record], opts: RunOptions, state: RunState) -> None:
    kind = _kind(records)
    _say(opts, f"scoring the unedited model on {len(records)} records …")
    timer = [0.0]
    details = _details(lm, records, opts, label="scoring the unedited model", timer=timer, reference=True)
    state.answer_seconds += timer[0]
    state.baseline_details = [{k: v for k, v in d.items() if k not in _TEXTS} for d in details]
    if kind == "zsre":  # the unedited model keeps its own locality predictions by definition
        for d in state.baseline_details:
            d["locality_kept"] = 1.0
    if opts.answer_metrics:
        _drift_baseline(lm, opts, state)
    base: dict[str, Any] = _aggregate(kind, state.baseline_details)
    if opts.answer_metrics:
        base["drift"] = 0.0
    _say(opts, "measuring the unedited model's health and generation entropy …")
    health = measure_health(lm.model, lm.tokenizer, opts.health) if opts.health else None
    base["ge"], _ = _ge(lm, _generation_prompts(records, opts), health, opts)
    if health:
        base.update(health)
    state.baseline = base


_TEXTS = ("gen_answer", "chat_answer")  # answer texts: in the final per-record rows, not in the saved progress


def _drift_baseline(lm, opts: RunOptions, state: RunState) -> None:
    """The unedited model's answers to the generic prompts: the reference of drift."""
    t0 = time.perf_counter()
    state.drift_reference = answer_scores.drift_answers(lm.model, lm.tokenizer, opts.score_batch_size)
    state.answer_seconds += time.perf_counter() - t0


def _checkpoint_scores(lm, records: Sequence[Record], opts: RunOptions, state: RunState, n_edited: int) -> dict:
    idx = _sample_indices(n_edited, len(records), opts.checkpoint_sample, opts.seed)
    subset = [records[i] for i in idx]
    kind = _kind(records)
    timer = [0.0]
    details = _details(
        lm,
        subset,
        opts,
        _ref_loc(state, records),
        label=f"checkpoint at {n_edited} edits",
        ref_neighbours=_ref_neighbours(state, idx),
        timer=timer,
    )
    state.answer_seconds += timer[0]
    entry: dict[str, Any] = {"edits": n_edited, "batches": state.batches_done, "scored": len(idx)}
    entry["scores"] = _aggregate(kind, details)
    # The unedited model on the same facts, so the curve has its reference at each point.
    entry["baseline"] = _aggregate(kind, [state.baseline_details[i] for i in idx])
    drift = _drift(lm, opts, state)
    if drift is not None:
        entry["scores"]["drift"], entry["baseline"]["drift"] = drift, 0.0
    if opts.health:
        entry["health"] = measure_health(lm.model, lm.tokenizer, opts.health)
    return entry


def _norm_rows(editor, state: RunState, n_edited: int) -> None:
    for n in editor.norms():
        state.norms.setdefault(str(n.layer), []).append(
            {
                "batch": state.batches_done - 1,
                "edits": n_edited,
                "weight": n.weight_norm,
                "base": n.base_norm,
                "delta": n.delta_norm,
                "growth": n.growth,
                "load": n.load(state.prior_edits + n_edited),  # edits in the model per key dimension
            }
        )


# --- the run ---------------------------------------------------------------------------------


@dataclass
class EvalSpec:
    """Everything a run takes besides the model, its settings and the records: how it scores
    (`options`), which editor, where it writes, what it starts from, when it stops, whom it tells.
    The CLI builds one per run (app/cli/evaluation.py); `run_eval` and `resume_from` take it, or
    its fields as keywords."""

    options: RunOptions | None = None
    batch_size: int | None = None
    editor: Any = None
    key_stats: dict | None = None
    out_dir: Path | str | None = None
    run_info: dict | None = None
    state: RunState | None = None
    progress: bool = True
    stop_after_batches: int | None = None
    restore_weights: bool = False
    start_state: Any = None
    earlier_records: Sequence[Record] | None = None
    should_stop: Callable[[RunState], bool] | None = None
    on_checkpoint: Callable[[RunState], None] | None = None


def run_eval(lm, settings, records: Sequence[Record], spec: EvalSpec | None = None, **fields: Any) -> dict:
    """Edit `records` in sequential batches on `lm` and score them; returns the summary dict.

    lm: an `app.editing.model.LoadedModel`; settings: `EditSettings`; the rest is `spec` (an
    `EvalSpec`, or its fields as keywords, which replace the spec's). editor: an existing
    Editor on `lm` (else one is built from `key_stats`, or from the default cache).
    With `out_dir`, writes summary.json and the plots there, and checkpoints when
    `options.checkpoint_every` is set. `state` (with a restored editor) resumes a run.
    `stop_after_batches` stops (raising RunInterrupted) once that many batches are done
    and checkpointed, which is how the resume test simulates an interruption.
    The edits stay in `lm`'s weights unless `restore_weights` (for sweeps that reuse one
    model: every batch is removed again through the editor, newest first).
    `start_state` (an `editor.state_dict()` of the same settings, e.g. a finished run's final
    state) is loaded after the unedited model has been scored, so this run's edits go on top
    of an earlier run's; `earlier_records` (that run's records, or a fixed sample of
    `checkpoint_sample` of them) are scored again at the end.
    `should_stop(state)`, asked after every batch, ends the run early (RunInterrupted) with
    its state saved for a resume, so a run under a time limit stops at a batch boundary
    instead of losing the batches since its last checkpoint. `on_checkpoint(state)` is
    called after each scored checkpoint (to publish partial results while the run goes on).
    """
    spec = replace(spec or EvalSpec(), **fields)
    opts = replace(spec.options) if spec.options else RunOptions(batch_size=spec.batch_size or 1)  # a copy: set below
    if spec.batch_size is not None:
        opts.batch_size = spec.batch_size
    if opts.batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if not records:
        raise ValueError("no records to edit")
    kind = _kind(records)
    opts.progress = progress = spec.progress
    out = Path(spec.out_dir) if spec.out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    editor = spec.editor
    if editor is None:
        editor = build_editor(lm, settings, Role.EVAL, key_stats=spec.key_stats)
    state = spec.state
    start_state, earlier_records = spec.start_state, spec.earlier_records
    should_stop, on_checkpoint, stop_after_batches = spec.should_stop, spec.on_checkpoint, spec.stop_after_batches

    n_batches = math.ceil(len(records) / opts.batch_size)
    started = time.perf_counter()
    if state is None:
        state = RunState(n_records=len(records), batch_size=opts.batch_size)
        _baseline(lm, records, opts, state)
        if start_state is not None:
            restore_editor(editor, start_state)
            state.first_batch_id = max(editor.batch_ids, default=-1) + 1
            state.prior_edits = sum(d[0].keys.shape[1] for d in editor.live.values())
    elif state.n_records != len(records) or state.batch_size != opts.batch_size:
        raise ValueError("the saved progress was made with another number of records or batch size")
    prior_wall = state.wall_seconds

    live_name = "ES" if kind == "counterfact" else "edit acc"
    bar = tqdm(
        total=len(records),
        initial=min(len(records), state.batches_done * opts.batch_size),
        unit="edit",
        desc=f"{settings.method} edits",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for b in range(state.batches_done, n_batches):
            batch = records[b * opts.batch_size : (b + 1) * opts.batch_size]
            t0 = time.perf_counter()
            result = editor.apply([r.request() for r in batch], batch_id=state.first_batch_id + b)
            seconds = time.perf_counter() - t0
            steps = [o.mpes_steps for o in result.outcomes]
            live = _live_score(lm, batch, opts)
            state.batches.append(
                {
                    "batch": b,
                    "edits": len(batch),
                    "seconds": seconds,
                    "z_seconds": result.z_seconds,
                    "solve_seconds": result.solve_seconds,
                    "mean_steps": sum(steps) / len(steps) if steps else None,
                    "reedited": result.extra.get("reedited", []),  # facts written again, per pass
                    "live_score": live,
                }
            )
            state.batches_done = b + 1
            n_edited = min(len(records), state.batches_done * opts.batch_size)
            _norm_rows(editor, state, n_edited)
            bar.update(len(batch))
            bar.set_postfix({live_name: f"{live:.0f}", "s/edit": f"{seconds / len(batch):.2f}"})
            _log_batch(opts, state, n_batches, live_name)

            last = state.batches_done == n_batches
            scored = bool(opts.checkpoint_every and state.batches_done % opts.checkpoint_every == 0 and not last)
            if scored:
                state.checkpoints.append(_checkpoint_scores(lm, records, opts, state, n_edited))
                _log_checkpoint(opts, state.checkpoints[-1])
            asked = should_stop is not None and not last and should_stop(state)
            if scored or asked:
                state.wall_seconds = prior_wall + time.perf_counter() - started
                if out is not None:
                    save_checkpoint(out, editor.state_dict(), state.to_json())
            if out is not None and opts.checkpoint_every and not last:
                state.wall_seconds = prior_wall + time.perf_counter() - started
                save_trail(
                    out,
                    b,
                    torch.stack([o.z_star for o in result.outcomes]),
                    state.to_json(),
                    settings.model_dump(mode="json"),
                )
            if scored and on_checkpoint is not None:
                on_checkpoint(state)
            if asked:
                raise RunInterrupted(f"stopped after {state.batches_done} batches: should_stop said so")
            if scored and stop_after_batches is not None and state.batches_done >= stop_after_batches:
                raise RunInterrupted(f"stopped after {state.batches_done} batches as asked")
    finally:
        bar.close()

    if out is not None:  # what `--after` starts from, and what a resume of a finished run finds
        save_checkpoint(out, editor.state_dict(), state.to_json(), name=FINAL_DIR)
    summary = _final_summary(lm, editor, settings, records, opts, state, kind)
    if earlier_records:
        idx = _sample_indices(len(earlier_records), len(earlier_records), opts.checkpoint_sample, opts.seed)
        again = [earlier_records[i] for i in idx]
        _say(opts, f"scoring {len(again)} of the {len(earlier_records)} records of the earlier run again …")
        summary["earlier_records"] = {
            "records": len(earlier_records),
            "scored": len(again),
            "kind": _kind(again),
            **_aggregate(_kind(again), _details(lm, again, opts, label="earlier run's records")),
        }
    summary["wall_seconds"] = prior_wall + time.perf_counter() - started
    summary["run"] = {
        **(spec.run_info or {}),
        "records": len(records),
        "batch_size": opts.batch_size,
        "prior_edits": state.prior_edits,
        "checkpoint_every": opts.checkpoint_every,
        "checkpoint_sample": opts.checkpoint_sample,
        "generation_samples": opts.generation_samples,
        "gen_max_len": opts.gen_max_len,
        "kind": kind,
        "health": asdict(opts.health) if opts.health else None,
        "seed": opts.seed,
    }
    if out is not None:
        write_summary(out, summary)
    if spec.restore_weights:
        for b in reversed(editor.batch_ids):
            editor.remove_batch(b)
    return summary


def _final_summary(lm, editor, settings, records, opts: RunOptions, state: RunState, kind: str) -> dict:
    _say(opts, f"final scores on {len(records)} edited records, health, generation …")
    timer = [0.0]
    details = _details(
        lm,
        records,
        opts,
        _ref_loc(state, records),
        label="final scores",
        ref_neighbours=_ref_neighbours(state, range(len(records))),
        timer=timer,
    )
    state.answer_seconds += timer[0]
    scores = _aggregate(kind, details)
    drift = _drift(lm, opts, state)
    if drift is not None:
        scores["drift"] = drift
    health = measure_health(lm.model, lm.tokenizer, opts.health) if opts.health else None
    ge, ge_source = _ge(lm, _generation_prompts(records, opts), health, opts)
    edits = sum(b["edits"] for b in state.batches)
    edit_seconds = sum(b["seconds"] for b in state.batches)
    z = sum(b["z_seconds"] for b in state.batches)
    solve = sum(b["solve_seconds"] for b in state.batches)
    summary: dict[str, Any] = {**scores, "ge": ge, "ge_source": ge_source}
    summary.update(
        {
            "edits": edits,
            "seconds_per_edit": edit_seconds / edits,
            "z_seconds": z,
            "solve_seconds": solve,
            "z_seconds_per_edit": z / edits,
            "solve_seconds_per_edit": solve / edits,
            "edit_seconds": edit_seconds,
            "answer_seconds": state.answer_seconds,
            "chat_questions": _chat_questions(lm, details) if opts.answer_metrics else None,
            "health": health,
            "baseline": state.baseline,
            "checkpoints": state.checkpoints,
            "batches": state.batches,
            "norms": state.norms,
            "settings": settings.model_dump(mode="json"),
            "weights_hash": editor.weights_hash(),
            "by_batch": _by_batch(kind, details, state.baseline_details, opts.batch_size),
            "per_record": [{"case_id": r.case_id, **_public(d)} for r, d in zip(records, details, strict=True)],
        }
    )
    return summary


def _chat_questions(lm, details: Sequence[dict]) -> dict:
    """How the chat questions were asked: through the model's template or not at all, and how many
    records had only the generic fallback question (a CounterFact template without a written one)."""
    return {
        "chat_template": has_chat_template(lm.tokenizer),
        "records": len(details),
        "generic": sum(1 for d in details if d.get("question_written") is False),
    }


def _by_batch(kind: str, details: Sequence[dict], baseline: Sequence[dict], batch_size: int) -> list[dict]:
    """Final scores of each batch's facts beside the unedited model's on the same facts: an early
    batch that lost more than a late one was hurt by the edits that came after it."""
    out = []
    for b, start in enumerate(range(0, len(details), batch_size)):
        part = slice(start, start + batch_size)
        out.append(
            {
                "batch": b,
                "records": len(details[part]),
                "scores": _aggregate(kind, details[part]),
                "baseline": _aggregate(kind, baseline[part]),
            }
        )
    return out


def write_summary(out: Path, summary: dict) -> None:
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    from app.eval.plots import plot_run  # matplotlib only when plots are written

    plot_run(summary, out)


# --- building the pieces, and resuming ------------------------------------------------------


def restore_editor(editor, editor_state) -> None:
    """Load a saved `editor.state_dict()` into a fresh editor on the unedited model."""
    if isinstance(editor_state, (tuple, list)) and len(editor_state) == 2:
        editor.load_state_dict(*editor_state)  # (tensors, meta), as Editor.state_dict() returns
    else:
        editor.load_state_dict(editor_state)


def resume_from(
    out_dir: Path | str,
    lm,
    settings,
    records: Sequence[Record],
    options: RunOptions | None = None,
    *,
    spec: EvalSpec | None = None,
    **fields: Any,
) -> dict:
    """Continue the run saved in `out_dir` on a freshly loaded, unedited `lm` (or a fresh
    `editor` on it): from its full checkpoint, or from its trail (every batch's z*) when that
    is further along or the only one there; batches after the last scored checkpoint are
    then kept instead of edited again. `options` and `fields` replace those of `spec`."""
    spec = replace(spec or EvalSpec(), **fields)
    if options is not None:
        spec.options = options
    assert spec.options is not None, "resume_from needs the run's options"
    options, editor, progress = spec.options, spec.editor, spec.progress
    if editor is None:
        editor = build_editor(lm, settings, Role.EVAL, key_stats=spec.key_stats)
    trail = load_trail(out_dir)
    if trail is not None and trail[1]["batches_done"] > checkpoint_batches(out_dir):
        z_stars, progress_json, saved = trail
        changed = differences(saved, settings) if saved is not None else ""
        if changed:
            raise ValueError(
                f"the trail in {out_dir} was made with other settings ({changed}): a preset "
                "changed since? resume it with the trail's settings or start again"
            )
        state = RunState.from_json(progress_json)
        _answer_baseline_for(lm, records, options, state)
        _say(options, f"writing the {state.batches_done} saved batches into the unedited model again from their z* …")
        _rewrite_from_trail(editor, records, state, z_stars, progress)
    else:
        editor_state, progress_json = load_checkpoint(out_dir)
        state = RunState.from_json(progress_json)
        _answer_baseline_for(lm, records, options, state)
        restore_editor(editor, editor_state)
    return run_eval(lm, settings, records, replace(spec, editor=editor, out_dir=out_dir, state=state))


def _rewrite_from_trail(editor, records: Sequence[Record], state: RunState, z_stars, progress: bool) -> None:
    """Write the trail's batches into the unedited model again, in order, from their stored z*."""
    if state.prior_edits:
        raise ValueError("a run that continues another (--after) resumes from its full checkpoint only")
    n = state.batch_size
    for b in tqdm(
        range(state.batches_done),
        desc="writing the saved batches again",
        unit="batch",
        disable=not progress,
        dynamic_ncols=True,
    ):
        batch = records[b * n : (b + 1) * n]
        if len(batch) != len(z_stars[b]):
            raise ValueError(f"the trail's batch {b} holds {len(z_stars[b])} z*, the records give {len(batch)} facts")
        editor.reapply([r.request() for r in batch], list(z_stars[b]), batch_id=state.first_batch_id + b)

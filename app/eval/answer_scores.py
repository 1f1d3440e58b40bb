"""The metrics of what a user reads: greedy answers of the model, judged by app/editing/answers.py's rule.

Per record (definitions in docs/eval.md, "Where users look"):
- `gen_es` / `gen_es_begins`: the greedy continuation (10 tokens) of the edit prompt with the subject
  filled in shows target_new / begins with it;
- `gen_ps` / `gen_ps_begins`: the same, averaged over the record's paraphrase prompts;
- `chat_es`: the answer (24 tokens) to a natural question about the fact, asked through the model's
  chat template, shows target_new; `chat_old`: it does not, but shows the old object (target_true).
  None where the model has no chat template (or, for `chat_old`, the record has no old object);
- `gen_leak`: share of the neighbourhood prompts whose answer shows target_new where the unedited
  model's answer did not; `gen_kept_n` of the `gen_known` neighbourhood prompts whose unedited
  answer showed the true object still show it (pooled over records into `gen_kept`);
  `gen_ns_true`: share of neighbourhood answers that show the true object;
- `drift` (per model, not per record): share of the fixed generic prompts (app/eval/questions.py)
  whose greedy 8-token answer changed from the unedited model's.

The model-facing part (`collect_answers`, `drift_answers`) batches every prompt of a set of records
into one left-padded greedy pass; the rest is pure and unit-tested on fixed answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.editing.answers import begins_with, greedy_answers, has_chat_template, normalise, shows
from app.eval.data import CounterFactRecord, Record, ZsreRecord
from app.eval.questions import DRIFT_PROMPTS, chat_question

GEN_TOKENS = 10  # greedy tokens for the edit, paraphrase and neighbourhood prompts
CHAT_TOKENS = 24  # for the chat answer
DRIFT_TOKENS = 8  # for the generic drift prompts

# Per-record keys that are shares in 0..1, averaged over the records that have them.
SHARE_KEYS = ("gen_es", "gen_es_begins", "gen_ps", "gen_ps_begins", "chat_es", "chat_old", "gen_leak", "gen_ns_true")
# What an aggregation reports (percent), in display order; `drift` is added per model.
METRIC_KEYS = (*SHARE_KEYS[:6], "gen_leak", "gen_kept", "gen_ns_true", "drift")


@dataclass(frozen=True)
class Probe:
    """What a record asks the model, and what its answers are judged against."""

    prompt: str  # the edit prompt, subject filled in
    paraphrases: tuple[str, ...]
    neighbours: tuple[str, ...]
    question: str
    question_written: bool  # False: the generic fallback question
    target_new: str
    target_old: str | None
    neighbour_true: str


def probe_of(record: Record) -> Probe:
    question, written = chat_question(record)
    if isinstance(record, CounterFactRecord):
        return Probe(
            record.rewrite_prompt,
            record.paraphrase_prompts,
            record.neighborhood_prompts,
            question,
            written,
            record.target_new,
            record.target_true,
            record.neighborhood_true,
        )
    if isinstance(record, ZsreRecord):
        old = record.request().target_true
        return Probe(
            record.question,
            (record.rephrase,),
            (record.loc_prompt,),
            question,
            written,
            record.target,
            old,
            record.loc_answer,
        )
    raise TypeError(f"no answer metrics for a {type(record).__name__}")


@dataclass(frozen=True)
class Answers:
    """The model's greedy answers to one record's prompts (`chat` None: no chat template)."""

    prompt: str
    paraphrases: tuple[str, ...]
    neighbours: tuple[str, ...]
    chat: str | None


def collect_answers(
    model, tokenizer, probes: Sequence[Probe], batch_size: int = 32, chat: bool | None = None
) -> list[Answers]:
    """Every probe's answers: plain prompts in one batched pass (repeated prompts asked once),
    the chat questions in another. `chat=None`: ask through the chat template if the tokenizer has one."""
    if chat is None:
        chat = has_chat_template(tokenizer)
    plain = list(dict.fromkeys(p for pr in probes for p in (pr.prompt, *pr.paraphrases, *pr.neighbours)))
    said = dict(zip(plain, greedy_answers(model, tokenizer, plain, GEN_TOKENS, batch_size), strict=True))
    chats: list[str | None] = [None] * len(probes)
    if chat and probes:
        questions = list(dict.fromkeys(pr.question for pr in probes))
        asked = greedy_answers(model, tokenizer, questions, CHAT_TOKENS, batch_size, chat=True)
        told = dict(zip(questions, asked, strict=True))
        chats = [told[pr.question] for pr in probes]
    return [
        Answers(said[pr.prompt], tuple(said[p] for p in pr.paraphrases), tuple(said[p] for p in pr.neighbours), c)
        for pr, c in zip(probes, chats, strict=True)
    ]


def drift_answers(model, tokenizer, batch_size: int = 32) -> list[str]:
    return greedy_answers(model, tokenizer, list(DRIFT_PROMPTS), DRIFT_TOKENS, batch_size)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def record_details(probe: Probe, answers: Answers, reference_neighbours: Sequence[str] | None = None) -> dict:
    """One record's answer metrics (shares 0..1, counts, the two answers a person reads first).

    `reference_neighbours`: the unedited model's answers to the neighbourhood prompts; without
    them (records of an earlier run) leak and kept are left out."""
    new, old, true = probe.target_new, probe.target_old, probe.neighbour_true
    d: dict = {
        "gen_es": float(shows(answers.prompt, new)),
        "gen_es_begins": float(begins_with(answers.prompt, new)),
        "gen_ps": _mean([float(shows(a, new)) for a in answers.paraphrases]),
        "gen_ps_begins": _mean([float(begins_with(a, new)) for a in answers.paraphrases]),
        "chat_es": None,
        "chat_old": None,
        "gen_ns_true": _mean([float(shows(a, true)) for a in answers.neighbours]),
        "question_written": probe.question_written,
        "gen_answer": answers.prompt,
        "chat_answer": answers.chat,
    }
    if answers.chat is not None:
        d["chat_es"] = float(shows(answers.chat, new))
        if old is not None:
            d["chat_old"] = float(not d["chat_es"] and shows(answers.chat, old))
    if reference_neighbours is not None:
        pairs = list(zip(answers.neighbours, reference_neighbours, strict=True))
        d["gen_leak"] = _mean([float(shows(a, new) and not shows(r, new)) for a, r in pairs])
        known = [a for a, r in pairs if shows(r, true)]
        d["gen_known"] = len(known)
        d["gen_kept_n"] = sum(shows(a, true) for a in known)
    return d


def aggregate(details: Sequence[dict]) -> dict[str, float | None]:
    """Percentages over records: each share averaged over the records that have it (None where none
    has it: no chat template, no reference); `gen_kept` pooled over the neighbourhood prompts the
    unedited model answered with the true object (None if there were none)."""
    out: dict[str, float | None] = {}
    for k in SHARE_KEYS:
        values = [d[k] for d in details if d.get(k) is not None]
        out[k] = 100.0 * _mean(values) if values else None
    known = sum(d.get("gen_known", 0) for d in details)
    out["gen_kept"] = 100.0 * sum(d.get("gen_kept_n", 0) for d in details) / known if known else None
    return out


def drift(answers: Sequence[str], reference: Sequence[str]) -> float:
    """Percent of the generic prompts whose answer differs (after normalisation) from the reference's."""
    pairs = list(zip(answers, reference, strict=True))
    return 100.0 * sum(normalise(a) != normalise(r) for a, r in pairs) / len(pairs)

"""The answer metrics (app/eval/answer_scores.py) on fixed answers, and their collection on a tiny model."""

from __future__ import annotations

import pytest

from app.eval.answer_scores import (
    DRIFT_TOKENS,
    Answers,
    Probe,
    aggregate,
    collect_answers,
    drift,
    probe_of,
    record_details,
)
from app.eval.data import CounterFactRecord, ZsreRecord
from app.eval.questions import DRIFT_PROMPTS
from tests.utils.tiny import build_tiny_model

PROBE = Probe(
    prompt="Danielle Darrieux's mother tongue is",
    paraphrases=("p1", "p2"),
    neighbours=("n1", "n2", "n3"),
    question="What is the mother tongue of Danielle Darrieux?",
    question_written=True,
    target_new="English",
    target_old="French",
    neighbour_true="French",
)


def test_record_details_on_fixed_answers() -> None:
    answers = Answers(
        prompt=" the English language",  # shows, but does not begin with it
        paraphrases=(" English, of course", " French"),
        neighbours=(" English", " French", " German"),
        chat="Her mother tongue is French.",
    )
    reference = (" French", " French", " English")  # the unedited model's neighbourhood answers
    d = record_details(PROBE, answers, reference)
    assert (d["gen_es"], d["gen_es_begins"]) == (1.0, 0.0)
    assert (d["gen_ps"], d["gen_ps_begins"]) == (0.5, 0.5)
    assert (d["chat_es"], d["chat_old"]) == (0.0, 1.0)  # still says the old object
    # Neighbour 1 gained "English" (leak); neighbour 3 said it already (no leak).
    assert d["gen_leak"] == pytest.approx(1 / 3)
    # The unedited model said "French" on neighbours 1 and 2; only neighbour 2 still does.
    assert (d["gen_known"], d["gen_kept_n"]) == (2, 1)
    assert d["gen_ns_true"] == pytest.approx(1 / 3)
    assert d["gen_answer"] == answers.prompt and d["chat_answer"] == answers.chat


def test_an_answer_with_both_objects_counts_as_the_new_one() -> None:
    d = record_details(PROBE, Answers("English", ("x",), ("x",), "French, now English"), None)
    assert (d["chat_es"], d["chat_old"]) == (1.0, 0.0)
    assert "gen_leak" not in d and "gen_known" not in d  # no reference: leak and kept left out


def test_aggregate_on_fixed_details() -> None:
    a = record_details(PROBE, Answers(" English", (" English", " x"), (" French",) * 3, "English"), (" French",) * 3)
    b = record_details(PROBE, Answers(" Paris", (" x", " x"), (" x",) * 3, "I think French"), (" French", " x", " x"))
    agg = aggregate([a, b])
    assert agg["gen_es"] == agg["gen_es_begins"] == 50.0
    assert agg["gen_ps"] == 25.0 and agg["chat_es"] == 50.0 and agg["chat_old"] == 50.0
    assert agg["gen_leak"] == 0.0
    assert agg["gen_kept"] == pytest.approx(100 * 3 / 4)  # pooled: 3 of the 4 known neighbours kept
    assert agg["gen_ns_true"] == 50.0


def test_absent_metrics_are_none_not_zero() -> None:
    """No chat template: chat efficacy is absent, not 0; no known neighbour: kept is absent."""
    d = record_details(PROBE, Answers(" English", ("x",), (" x",), None), (" x",))
    agg = aggregate([d])
    assert agg["chat_es"] is None and agg["chat_old"] is None
    assert agg["gen_kept"] is None and agg["gen_leak"] == 0.0 and agg["gen_es"] == 100.0


def test_drift_counts_changed_answers_after_normalisation() -> None:
    ref = [" Paris.", " 100 degrees", " Jupiter"]
    assert drift(ref, ref) == 0.0
    assert drift([" PARIS.", " 100  degrees", " Saturn"], ref) == pytest.approx(100 / 3)
    with pytest.raises(ValueError):
        drift(ref[:2], ref)


def test_probes_of_both_formats() -> None:
    cf = CounterFactRecord(
        case_id=0,
        prompt="The mother tongue of {} is",
        subject="Danielle Darrieux",
        target_new="English",
        target_true="French",
        paraphrase_prompts=("p",),
        neighborhood_prompts=("n",),
        neighborhood_true="French",
    )
    p = probe_of(cf)
    assert p.prompt == "The mother tongue of Danielle Darrieux is"
    assert p.question == "What is the mother tongue of Danielle Darrieux?" and p.question_written
    assert (p.target_new, p.target_old, p.neighbour_true) == ("English", "French", "French")
    zs = ZsreRecord(0, "Which family does {} belong to?", "Ramalinaceae", "Lecanorales", "Lecanorales", "r", "l?", "x")
    z = probe_of(zs)
    assert z.question == z.prompt == "Which family does Ramalinaceae belong to?"
    assert z.target_old is None  # the edit writes the answer the model should give: no old object
    assert z.paraphrases == ("r",) and z.neighbours == ("l?",) and z.neighbour_true == "x"


def test_collect_answers_on_a_tiny_model() -> None:
    model, tok = build_tiny_model("llama")
    probes = [PROBE, Probe("Rome is in", ("p1",), ("n1", "Rome is in"), "Where is Rome?", True, "Italy", None, "x")]
    got = collect_answers(model, tok, probes, batch_size=4)
    assert [len(a.paraphrases) for a in got] == [2, 1] and [len(a.neighbours) for a in got] == [3, 2]
    assert got[1].prompt == got[1].neighbours[1]  # the same prompt, asked once, the same answer
    assert all(a.chat is None for a in got)  # the tiny tokenizer has no chat template
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}<assistant>"
    chatted = collect_answers(model, tok, probes, batch_size=4)
    assert all(isinstance(a.chat, str) for a in chatted)
    assert [a.prompt for a in chatted] == [a.prompt for a in got]
    assert DRIFT_TOKENS == 8 and 20 <= len(DRIFT_PROMPTS) <= 50 and len(set(DRIFT_PROMPTS)) == len(DRIFT_PROMPTS)

"""The natural question per CounterFact template (app/eval/questions.py), and its coverage of the shared data."""

from __future__ import annotations

import pytest

from app.eval.data import CounterFactRecord, ZsreRecord, load_dataset
from app.eval.questions import CF_QUESTIONS, GENERIC_QUESTION, chat_question


def _record(prompt: str, subject: str = "Danielle Darrieux") -> CounterFactRecord:
    return CounterFactRecord(0, prompt, subject, "English", "French", ("p",), ("n",), "French")


@pytest.mark.parametrize(
    ("template", "subject", "question"),
    [
        ("The mother tongue of {} is", "Danielle Darrieux", "What is the mother tongue of Danielle Darrieux?"),
        ("{} was born in", "Auguste Cain", "Where was Auguste Cain born?"),
        ("{}, whose headquarters are in", "Zillow", "Where are the headquarters of Zillow?"),
        ("{} was from", "In Flames", "Where does In Flames come from?"),
        ("{} is located in the continent", "Mount Bursey", "Which continent is Mount Bursey on?"),
        ("{}, a product manufactured by", "Windows XP", "Which company made Windows XP?"),
        ("{} plays the instrument", "Hilary Hahn", "What instrument does Hilary Hahn play?"),
    ],
)
def test_question_per_template(template: str, subject: str, question: str) -> None:
    assert chat_question(_record(template, subject)) == (question, True)


def test_a_template_without_a_question_falls_back_to_the_generic_form() -> None:
    record = _record("{} was knighted by")
    question, written = chat_question(record)
    assert not written and question == GENERIC_QUESTION.format("Danielle Darrieux was knighted by")


def test_zsre_records_are_asked_their_own_question() -> None:
    rec = ZsreRecord(0, "Which family does {} belong to?", "Ramalinaceae", "Lecanorales", "Lecanorales", "r", "l?", "x")
    assert chat_question(rec) == ("Which family does Ramalinaceae belong to?", True)


def test_every_question_is_a_question_about_its_subject() -> None:
    for template, question in CF_QUESTIONS.items():
        assert template.count("{}") == 1 and question.count("{}") == 1, template
        assert question.endswith("?") and question[0].isupper(), question


def test_every_template_of_the_shared_counterfact_files_has_a_question(shared_data) -> None:
    files = [
        shared_data / "counterfact" / "counterfact.json",
        *sorted((shared_data / "counterfact_extra").glob("*.json")),
    ]
    templates = {r.prompt for f in files if f.exists() for r in load_dataset(f).records}
    assert len(templates) >= 200, f"only {len(templates)} CounterFact templates found in {shared_data}"
    missing = sorted(templates - set(CF_QUESTIONS))
    assert not missing, f"{len(missing)} of {len(templates)} templates have no question: {missing[:10]}"

"""The matching rule of app/editing/answers.py on fixed texts, and greedy answers on a tiny model."""

from __future__ import annotations

import pytest

from app.editing.answers import begins_with, greedy_answers, normalise, shows
from tests.utils.tiny import build_tiny_model


@pytest.mark.parametrize(
    ("answer", "target", "expected"),
    [
        (" Australia, in the south", "Australia", True),
        ("an Australian band", "Australia", True),  # a word that extends the target counts
        ("AUSTRALIA!", "australia", True),  # case-folded
        ("the Ausland", "Australia", False),
        ("a Comparison of cities", "Paris", False),  # inside a word: not at a word boundary
        ("in  New\n York City", "New York", True),  # whitespace collapsed
        ("Côte d\u2019Ivoire", "Côte d'Ivoire", True),  # typographic apostrophe folded
        ("the Pacific Ocean", "Africa", False),
        ("anything", "", False),  # an empty target is shown by nothing
        ("", "Paris", False),
        ("Paris-based", "Paris", True),
    ],
)
def test_shows(answer: str, target: str, expected: bool) -> None:
    assert shows(answer, target) is expected


@pytest.mark.parametrize(
    ("answer", "target", "expected"),
    [
        (" Sydney, Australia", "Sydney", True),
        ('"Sydney"', "Sydney", True),  # leading punctuation skipped
        ("the UK", "UK", False),  # "the" is a word, not skipped
        (" Australian", "Australia", True),
        ("in Sydney", "Sydney", False),
        ("Sydney", "", False),
    ],
)
def test_begins_with(answer: str, target: str, expected: bool) -> None:
    assert begins_with(answer, target) is expected


def test_normalise_is_idempotent() -> None:
    text = "  Ｆｕｌｌ\u00a0width \u201cquotes\u201d  "
    assert normalise(text) == normalise(normalise(text)) == 'full width "quotes"'


def test_greedy_answers_batched_equal_one_by_one() -> None:
    """Left padding changes nothing: each prompt's greedy answer is the same alone or in a batch."""
    model, tok = build_tiny_model("llama")
    prompts = ["The capital of France is", "A", "The mother tongue of Danielle Darrieux is"]
    batched = greedy_answers(model, tok, prompts, max_new_tokens=6, batch_size=8)
    alone = [greedy_answers(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == alone
    assert all(isinstance(a, str) for a in batched) and any(batched)

"""Metric definitions against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from app.eval import metrics


def test_prefers_is_strict_lower_nll():
    assert metrics.prefers(1.0, 2.0)
    assert not metrics.prefers(2.0, 1.0)
    assert not metrics.prefers(1.5, 1.5)  # a tie is not a success (the reference uses '>')


def test_counterfact_record_scores_by_hand():
    # (nll_new, nll_true) per prompt.
    rewrite = [(0.5, 2.0)]  # new preferred -> ES 1
    paraphrase = [(0.5, 2.0), (3.0, 1.0)]  # 1 of 2 -> PS 0.5
    neighborhood = [(4.0, 1.0), (4.0, 1.0), (1.0, 4.0), (2.0, 2.0)]  # true preferred 2 of 4 -> NS 0.5
    got = metrics.counterfact_record_scores(rewrite, paraphrase, neighborhood)
    assert got == {"es": 1.0, "ps": 0.5, "ns": 0.5}


def test_aggregate_is_mean_of_per_record_shares_then_harmonic_mean():
    per_record = [{"es": 1.0, "ps": 0.5, "ns": 0.9}, {"es": 0.0, "ps": 1.0, "ns": 0.7}]
    got = metrics.aggregate_counterfact(per_record)
    assert got["es"] == pytest.approx(50.0)
    assert got["ps"] == pytest.approx(75.0)
    assert got["ns"] == pytest.approx(80.0)
    # 3 / (1/50 + 1/75 + 1/80) = 3 / 0.0458333... = 65.4545...
    assert got["s"] == pytest.approx(3 / (1 / 50 + 1 / 75 + 1 / 80))
    assert got["s"] == pytest.approx(65.4545, abs=1e-3)


def test_harmonic_mean_edge_cases():
    assert metrics.harmonic_mean([40.0, 40.0, 40.0]) == pytest.approx(40.0)
    assert metrics.harmonic_mean([100.0, 0.0, 50.0]) == 0.0
    with pytest.raises(ValueError):
        metrics.harmonic_mean([])
    with pytest.raises(ValueError):
        metrics.harmonic_mean([-1.0, 2.0])


def test_share_and_mean_refuse_empty_input():
    with pytest.raises(ValueError):
        metrics.share([])
    with pytest.raises(ValueError):
        metrics.mean([])


def test_words_split_punctuation_like_treebank():
    assert metrics.words("Paris, France's capital.") == ["Paris", ",", "France's", "capital", "."]


def test_ngram_entropy_worked_example():
    # "a b a b a": bigrams (a b) x2, (b a) x2 -> H2 = 1 bit.
    # trigrams (a b a) x2, (b a b) x1 -> H3 = -(2/3 log2 2/3 + 1/3 log2 1/3) = 0.918296 bits.
    # weighted: 2/3 * 1 = 0.666667, 4/3 * 0.918296 = 1.224394; mean = 0.945531.
    h3 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    expected = (2 / 3 * 1.0 + 4 / 3 * h3) / 2
    assert expected == pytest.approx(0.945531, abs=1e-6)
    assert metrics.ngram_entropy("a b a b a") == pytest.approx(expected)


def test_ngram_entropy_repetition_is_low_and_variety_high():
    assert metrics.ngram_entropy("the the the the the the") == 0.0
    assert metrics.ngram_entropy("one") == 0.0  # no bigram, no trigram
    # 4 distinct words: 3 distinct bigrams (log2 3), 2 distinct trigrams (1 bit).
    assert metrics.ngram_entropy("w x y z") == pytest.approx((2 / 3 * math.log2(3) + 4 / 3 * 1.0) / 2)


def test_mean_ngram_entropy_is_reported_times_100():
    texts = ["a b a b a", "the the the the"]
    assert metrics.mean_ngram_entropy(texts) == pytest.approx(100 * (0.945531 + 0.0) / 2, abs=1e-4)


def test_token_accuracy():
    assert metrics.token_accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    with pytest.raises(ValueError):
        metrics.token_accuracy([1, 2], [1])


def test_perplexity_formula():
    # total NLL = 2 ln 3 over 2 tokens -> exp(ln 3) = 3
    assert metrics.perplexity(2 * math.log(3), 2) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        metrics.perplexity(1.0, 0)

"""Metric definitions, as pure functions on numbers and strings (no model here).

They follow the MEMIT / ENCORE evaluation code (facts only, re-implemented):

- CounterFact: a prompt "prefers" a target when the mean per-token negative
  log-likelihood of that target's tokens (written after a space) is lower.
  Per record: ES = share of rewrite prompts preferring target_new over target_true,
  PS = the same over paraphrase prompts, NS = share of neighbourhood prompts preferring
  the true object over target_new. The dataset score is the mean over records of these
  per-record shares, in percent; S is the harmonic mean of ES, PS and NS.
- GE: per text, the entropy in bits of its word-bigram and word-trigram frequency
  distributions, multiplied by 2/3 and 4/3, then averaged (arithmetic mean of the two);
  the mean over texts; reported ×100 like the paper tables.
- zsRE: teacher-forced token accuracy (argmax == target token), mean over the target's
  tokens per record, then the mean over records, in percent.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

NGRAM_ORDERS = (2, 3)
NGRAM_WEIGHTS = (2 / 3, 4 / 3)

# Words and single punctuation marks, close to NLTK's Treebank word tokenizer on plain
# English (which the reference uses); NLTK itself needs downloaded models, so not used.
_WORD_RE = re.compile(r"\w+(?:'\w+)*|'\w+|[^\w\s]")


def prefers(nll_preferred: float, nll_other: float) -> bool:
    """True when the first continuation is more likely (strictly lower mean NLL)."""
    return nll_preferred < nll_other


def share(flags: Iterable[bool]) -> float:
    """Fraction of true values (0..1); an empty list is an error, not a silent 0."""
    flags = list(flags)
    if not flags:
        raise ValueError("share() of an empty list")
    return sum(bool(f) for f in flags) / len(flags)


def mean(values: Iterable[float]) -> float:
    values = list(values)
    if not values:
        raise ValueError("mean() of an empty list")
    return sum(values) / len(values)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 when any value is 0 (the limit), like scipy.stats.hmean."""
    if not values:
        raise ValueError("harmonic_mean() of an empty list")
    if any(v < 0 for v in values):
        raise ValueError(f"harmonic mean needs non-negative values, got {list(values)}")
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def counterfact_record_scores(
    rewrite: Sequence[tuple[float, float]],
    paraphrase: Sequence[tuple[float, float]],
    neighborhood: Sequence[tuple[float, float]],
) -> dict[str, float]:
    """Per-record shares (0..1) from (nll_new, nll_true) pairs per prompt.

    `neighborhood` pairs are (nll_new, nll_true) as well: success there means the true
    object stays preferred.
    """
    return {
        "es": share(prefers(new, true) for new, true in rewrite),
        "ps": share(prefers(new, true) for new, true in paraphrase),
        "ns": share(prefers(true, new) for new, true in neighborhood),
    }


def aggregate_counterfact(per_record: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of per-record shares, in percent, and S = harmonic mean of ES, PS, NS."""
    out = {k: 100.0 * mean(r[k] for r in per_record) for k in ("es", "ps", "ns")}
    out["s"] = harmonic_mean([out["es"], out["ps"], out["ns"]])
    return out


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text)


def ngram_entropy(text: str, orders: Sequence[int] = NGRAM_ORDERS, weights: Sequence[float] = NGRAM_WEIGHTS) -> float:
    """Weighted n-gram entropy of one text, in bits (not ×100).

    For each order n: the entropy of the frequency distribution of the text's word
    n-grams, times its weight; the result is the arithmetic mean of those products.
    A text too short to have any n-gram of an order contributes 0 for that order.
    """
    tokens = words(text)
    parts = []
    for n, w in zip(orders, weights, strict=True):
        counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        total = sum(counts.values())
        h = -sum((c / total) * math.log2(c / total) for c in counts.values()) if total else 0.0
        parts.append(w * h)
    return sum(parts) / len(parts)


def mean_ngram_entropy(texts: Sequence[str]) -> float:
    """GE as the paper tables report it: the mean weighted n-gram entropy over texts, ×100."""
    return 100.0 * mean(ngram_entropy(t) for t in texts)


def token_accuracy(predicted: Sequence[int], target: Sequence[int]) -> float:
    """Share of positions where the predicted token equals the target token (0..1)."""
    if len(predicted) != len(target):
        raise ValueError(f"length mismatch: {len(predicted)} predictions for {len(target)} targets")
    return share(p == t for p, t in zip(predicted, target, strict=True))


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean NLL per predicted token), NLL in nats."""
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one predicted token")
    return math.exp(total_nll / n_tokens)

"""Evaluation: CounterFact / zsRE metrics, the sequential runner, plots (docs/eval.md)."""

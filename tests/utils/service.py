"""Shared by the embedded-mode and the PostgreSQL + Redis tests (tests/conftest.py, tests/service, ...):
a tiny model on disk, a config that edits it quickly, and small waiting helpers."""
from __future__ import annotations

import time
from pathlib import Path

from app.config import ServiceConfig
from tests.utils.tiny import TRAINING_TEXT, build_tiny_model

# Quick settings for a 6-layer tiny Llama; λp > 0 so the key statistics path runs too.
TINY_OVERRIDES = {
    "layers": [1, 2], "stats_tokens": 1000, "n_prefixes": 2, "prefix_tokens": 4, "max_steps": 4,
    "lambda_p": 1.0, "lambda_n": 1.0,
}

FACTS = [
    {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "target_new": "English",
     "target_true": "French"},
    {"prompt": "{} is the capital of", "subject": "Paris", "target_new": "Japan", "target_true": "France"},
    {"prompt": "{} plays", "subject": "Lionel Messi", "target_new": "music", "target_true": "soccer"},
    {"prompt": "{} was founded by", "subject": "Apple", "target_new": "Toyota"},
]


def make_tiny_assets(root: Path) -> tuple[Path, Path]:
    """A saved tiny Llama folder and a small text corpus for its key statistics."""
    model_dir, corpus = root / "tiny-llama", root / "corpus.txt"
    if not (model_dir / "config.json").exists():
        model, tok = build_tiny_model("llama")
        model.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        corpus.write_text("\n".join(TRAINING_TEXT * 60))
    return model_dir, corpus


def tiny_config(model_dir: Path, corpus: Path, cache_dir: Path, **over) -> ServiceConfig:
    base = dict(
        model_path=str(model_dir), cache_dir=cache_dir, stats_corpus=corpus, edit_overrides=dict(TINY_OVERRIDES),
        batch_size=8, batch_wait_ms=50, sync_poll_s=0.2, standby_poll_s=0.2,
    )
    base.update(over)
    return ServiceConfig(**base)


def wait_for(predicate, timeout: float = 120.0, what: str = "condition"):
    """Poll until `predicate()` returns something truthy; fail with `what` if it never does.
    A generous bound against hangs, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_status(client, edit_id: int, statuses=("applied", "failed", "reverted"), timeout: float = 120.0) -> dict:
    def done():
        e = client.get(f"/edits/{edit_id}").json()
        return e if e["status"] in statuses else None

    return wait_for(done, timeout, f"edit {edit_id} to reach {statuses}")


"""Shared by the embedded-mode and the PostgreSQL + Redis tests (tests/conftest.py, tests/service, ...):
a tiny model on disk, a config that edits it quickly, and small waiting helpers."""

from __future__ import annotations

import time
from pathlib import Path

from app.config import ServiceConfig
from benchmarks.procs import REPO, clean_env, free_port, spawn_kedit, stop, wait_ready
from tests.utils.tiny import TRAINING_TEXT, build_tiny_model

# Quick settings for a 6-layer tiny Llama; λp > 0 so the key statistics path runs too.
TINY_OVERRIDES = {
    "layers": [1, 2],
    "stats_tokens": 1000,
    "n_prefixes": 2,
    "prefix_tokens": 4,
    "max_steps": 4,
    "lambda_p": 1.0,
    "lambda_n": 1.0,
    # A random tiny model shows few facts, so the default re-edit passes would write every batch three
    # times; the levers are tested where they are built (tests/editing) and on SmolLM2 by default.
    "reedit_passes": 0,
    "chat_contexts": 0,
}

TINY_CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"

FACTS = [
    {
        "prompt": "The mother tongue of {} is",
        "subject": "Danielle Darrieux",
        "target_new": "English",
        "target_true": "French",
    },
    {"prompt": "{} is the capital of", "subject": "Paris", "target_new": "Japan", "target_true": "France"},
    {"prompt": "{} plays", "subject": "Lionel Messi", "target_new": "music", "target_true": "soccer"},
    {"prompt": "{} was founded by", "subject": "Apple", "target_new": "Toyota"},
]


# Prompts about the facts of TRAINING_TEXT, which the tiny models may know.
TINY_PROMPTS = [
    "The mother tongue of Danielle Darrieux is",
    "Paris is the capital of",
    "Lionel Messi plays",
    "Apple was founded by",
    "Michael Jordan plays",
    "The Eiffel Tower is in",
]


def make_tiny_assets(root: Path) -> tuple[Path, Path]:
    """A saved tiny Llama folder and a small text corpus for its key statistics."""
    model_dir, corpus = root / "tiny-llama", root / "corpus.txt"
    if not (model_dir / "config.json").exists():
        model, tok = build_tiny_model("llama")
        # The model's own chat template, as real chat models carry one (the /v1/chat tests use it):
        # the messages' text joined, so a chat about a fact reads exactly like its bare prompt.
        tok.chat_template = TINY_CHAT_TEMPLATE
        model.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        corpus.write_text("\n".join(TRAINING_TEXT * 60))
    return model_dir, corpus


def tiny_config(model_dir: Path, corpus: Path, cache_dir: Path, **over) -> ServiceConfig:
    base = dict(
        model_path=str(model_dir),
        cache_dir=cache_dir,
        stats_corpus=corpus,
        edit_overrides=dict(TINY_OVERRIDES),
        batch_size=8,
        batch_wait_ms=50,
        sync_poll_s=0.2,
        standby_poll_s=0.2,
    )
    base.update(over)
    return ServiceConfig(**base)


def wait_for(predicate, timeout: float = 120.0, what: str = "condition", interval: float = 0.05):
    """Poll until `predicate()` returns something truthy; fail with `what` if it never does.
    A generous bound against hangs, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_status(client, edit_id: int, statuses=("applied", "failed", "reverted"), timeout: float = 120.0) -> dict:
    def done():
        e = client.get(f"/edits/{edit_id}").json()
        return e if e["status"] in statuses else None

    return wait_for(done, timeout, f"edit {edit_id} to reach {statuses}")


class KeditServer:
    """A real `kedit serve` process (embedded mode) on a free loopback port; stop() ends it."""

    def __init__(self, env: dict[str, str], log: Path, *, cwd: Path | None = None, log_level: str = "warning"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        # PYTHONPATH: this checkout's `app`, whichever kedit is installed.
        full = {**clean_env(PYTHONPATH=str(REPO)), **env}
        self.proc = spawn_kedit("serve", "--port", str(self.port), env=full, log=log, log_level=log_level, cwd=cwd)

    def wait_ready(self, timeout: float = 300) -> KeditServer:
        wait_ready(
            self.url,
            [self.proc],
            timeout,
            poll=0.05,
            error=AssertionError,
            describe=lambda p: f"kedit serve\n{self.log.read_text()}",
        )
        return self

    def stop(self) -> None:
        stop(self.proc)


def config_env(cfg: ServiceConfig) -> dict[str, str]:
    """The KEDIT_* variables that make a `kedit` command in this process use `cfg`'s model and log."""
    import json

    return {
        "KEDIT_DATABASE_URL": str(cfg.database_url),
        "KEDIT_MODEL_PATH": str(cfg.model_path),
        "KEDIT_CACHE_DIR": str(cfg.cache_dir),
        "KEDIT_STATS_CORPUS": str(cfg.stats_corpus),
        "KEDIT_EDIT_OVERRIDES": json.dumps(cfg.edit_overrides),
    }


def tiny_server_env(model_dir: Path, corpus: Path, cache: Path, db: Path, **extra: str) -> dict[str, str]:
    """kedit serve on the tiny model with the session's cache (key statistics computed once)."""
    import json

    return {
        "KEDIT_MODEL_PATH": str(model_dir),
        "KEDIT_STATS_CORPUS": str(corpus),
        "KEDIT_CACHE_DIR": str(cache),
        "KEDIT_DATABASE_URL": f"sqlite:///{db}",
        "KEDIT_EDIT_OVERRIDES": json.dumps(TINY_OVERRIDES),
        "KEDIT_BATCH_WAIT_MS": "50",
        "KEDIT_SYNC_POLL_S": "0.2",
        **extra,
    }

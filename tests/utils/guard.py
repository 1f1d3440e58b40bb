"""Shared by the quality-guard tests (tests/service/test_guard*.py): planting a canary the test
constructed, and reading answers the way the guard reads them."""

from __future__ import annotations

from app.eval.canaries import top1
from app.store import repo
from app.store.db import transaction
from app.store.models import Canary
from tests.utils.tiny import TRAINING_TEXT


def answers(worker, prompts: list[str]) -> list[int]:
    """Top-1 answers as the guard reads them (its copy of the worker's weights, in canary_dtype)."""
    return top1(worker.guard.model, worker.host.editor.lm.tokenizer, prompts)


def plant(ctx, worker, canary: str, text: str = " ".join(TRAINING_TEXT)) -> str:
    """The canaries of this log, before the worker chooses any: the model's own answer to `canary`
    (returned, as text), a held-out text and one generation prompt."""
    tok = worker.host.editor.lm.tokenizer
    answer = answers(worker, [canary])[0]
    with transaction(ctx.sessions) as s:
        repo.put_canaries(
            s,
            [
                Canary(id=1, kind="fact", text=canary, token_id=answer, expected=tok.decode([answer]).strip()),
                Canary(id=2, kind="text", text=text),
                Canary(id=3, kind="prompt", text="The river"),
            ],
        )
    return tok.decode([answer]).strip()

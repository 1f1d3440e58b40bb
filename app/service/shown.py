"""Does an applied edit show where users read it? The worker's check after every commit.

Once a version is committed (a batch, or a revert's re-apply of the batch-mates), the worker asks
its own weights, which are exactly that version's, every fact the version applied: the prompt with
the subject filled in, greedily (10 new tokens), and the edit's natural question, when
it has one, as one user turn through the model's chat template (24 new tokens). An
answer shows the fact when it contains target_new by app/editing/answers.py's rule (the one `kedit
eval` uses). The answers and verdicts go into the log in a transaction of their own.

Why after the commit, and apart from it: the check only reads the weights, so it holds the read
side of the host's lock, never the write side a version switch needs, and it cannot delay or undo
an edit. A crash (or any failure) between the commit and the record loses no edit and applies none
twice (the queue entries are acked after it, and a redelivered entry finds its edit applied); the
edits' shown fields then stay null, "not checked", and are not recomputed later: a check answers
for the version it names (`checked_version`), and later versions are other weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from app.editing.answers import chat_prompt, greedy_answers, has_chat_template, shows
from app.service import faults
from app.service.host import ModelHost
from app.store import repo
from app.store.db import transaction

log = logging.getLogger(__name__)

PROMPT_TOKENS = 10  # greedy tokens asked of the filled prompt
QUESTION_TOKENS = 24  # greedy tokens asked of the chat question
NO_CHAT_TEMPLATE = "the model has no chat template, so the question was not asked"


@dataclass
class Fact:
    edit_id: int
    prompt: str  # filled in
    target: str
    question: str | None


def fill(prompt: str, subject: str) -> str:
    """The fact's prompt with the subject in its slot (as the editing core fills it)."""
    return prompt.replace("{}", subject, 1)


def check(host: ModelHost, edit_ids: Sequence[int], version: int) -> list[repo.Check]:
    """Ask the weights of `version` (the host's, just committed) every edit's prompt and question and
    record what they answered. Never raises: a check that fails is logged and leaves the edits
    unchecked (shown null). Returns the checks recorded."""
    if not edit_ids:
        return []
    try:
        with host.sessions() as session:
            facts = [
                Fact(e.id, fill(e.prompt, e.subject), e.target_new, e.question)
                for e in repo.get_edits(session, edit_ids)
            ]
        checks = answer(host, facts, version)
        faults.point("worker_shown_checked")
        with transaction(host.sessions) as session:
            repo.record_checks(session, version, checks)
    except Exception:
        log.exception("could not check whether edits %s show in the answers of version %d", list(edit_ids), version)
        return []
    shown = sum(c.shown for c in checks)
    log.info("version %d: %d of %d applied edits show in the answer to their prompt", version, shown, len(checks))
    return checks


def answer(host: ModelHost, facts: Sequence[Fact], version: int) -> list[repo.Check]:
    """The greedy answers of the host's weights, which must still be `version`'s, and their verdicts."""
    lm = host.editor.lm
    tok, n_ctx = lm.tokenizer, lm.context_length
    chat = has_chat_template(tok)

    def fits(n_tokens: int, new: int) -> bool:
        return n_ctx is None or n_tokens + new <= n_ctx

    asked = [f for f in facts if fits(len(tok(f.prompt)["input_ids"]), PROMPT_TOKENS)]
    if len(asked) < len(facts):
        log.warning(
            "edits %s: the prompt and %d new tokens exceed the model's context; not checked",
            [f.edit_id for f in facts if f not in asked],
            PROMPT_TOKENS,
        )
    problems: dict[int, str] = {}
    questions: list[Fact] = []
    for f in asked:
        if f.question is None:
            continue
        if not chat:
            problems[f.edit_id] = NO_CHAT_TEMPLATE
        elif not fits(len(tok(chat_prompt(tok, f.question), add_special_tokens=False)["input_ids"]), QUESTION_TOKENS):
            problems[f.edit_id] = (
                f"the question through the chat template and {QUESTION_TOKENS} new tokens exceed the model's "
                f"context of {n_ctx} tokens, so it was not asked"
            )
        else:
            questions.append(f)
    with host.reading() as now:
        if now != version:
            raise RuntimeError(f"the weights are at version {now}, not {version}: they cannot answer for it")
        answers = greedy_answers(lm.model, tok, [f.prompt for f in asked], PROMPT_TOKENS)
        replies = greedy_answers(lm.model, tok, [f.question or "" for f in questions], QUESTION_TOKENS, chat=True)
    replied = {f.edit_id: r for f, r in zip(questions, replies, strict=True)}
    out = []
    for f, a in zip(asked, answers, strict=True):
        reply = replied.get(f.edit_id)
        out.append(
            repo.Check(
                edit_id=f.edit_id,
                shown=shows(a, f.target),
                answer=a,
                question_shown=None if reply is None else shows(reply, f.target),
                question_answer=reply,
                question_problem=problems.get(f.edit_id),
            )
        )
    return out

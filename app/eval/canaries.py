"""Canaries: fixed probes of a model's health, cheap enough to score after every batch of edits.

Three kinds, chosen once per model from the unedited weights (docs/quality.md):
- facts: prompts the unedited model completes with the right object as its top-1 next token,
  drawn from a list bundled with kedit (app/eval/canary_data/facts.json, written for kedit, not
  an evaluation set). An edit that flips one of them has broken something the model knew.
- text: a fixed slice of held-out prose (app/eval/canary_data/heldout.txt), for perplexity.
- prompts: a few free-generation prompts; the n-gram entropy of their greedy continuations falls
  when generation turns repetitive.

Everything here reads only the model and tokenizer it is given, so the same scores come out in a
worker, a test or a benchmark.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import torch

from app.editing.batching import pad_id_of, pad_left, pad_right
from app.eval import metrics
from app.eval.health import HEALTH_PROMPTS, perplexity_windows, sequence_nll
from app.eval.scoring import selected_logits

GEN_PROMPTS = HEALTH_PROMPTS[:4]
PPL_WINDOW = 128  # tokens per perplexity window: fits any model kedit edits, tiny test models included
ROWS_PER_FORWARD = 128
MIN_MARGIN = 1.0  # logits by which a canary fact's answer must lead the runner-up in the unedited model


@dataclass(frozen=True)
class CanaryFact:
    id: int
    text: str  # the prompt with its subject filled in; the model's next token should be `expected`'s first
    expected: str
    token_id: int
    subject: str = ""
    relation: str = ""


@dataclass
class CanarySet:
    facts: list[CanaryFact]
    text: str
    prompts: list[str]


@dataclass
class Scores:
    answers: list[int]  # each canary fact's top-1 next token on the scored weights
    perplexity: float
    entropy: float
    seconds: float = 0.0

    def lost(self, facts: Sequence[CanaryFact]) -> list[int]:
        """Ids of the facts these weights no longer answer as the unedited model did."""
        return [f.id for f, a in zip(facts, self.answers, strict=True) if a != f.token_id]


def bundled_facts() -> list[dict]:
    """Candidate facts shipped with kedit: {relation, prompt (with {}), subject, target}."""
    return json.loads(resources.files("app.eval").joinpath("canary_data/facts.json").read_text(encoding="utf-8"))


def bundled_text() -> str:
    return resources.files("app.eval").joinpath("canary_data/heldout.txt").read_text(encoding="utf-8")


def first_token(tokenizer, target: str) -> int:
    return tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"][0]


@torch.inference_mode()
def top1(model, tokenizer, texts: Sequence[str], margins: list[float] | None = None) -> list[int]:
    """The most probable next token after each text (the vocabulary projection only at the last
    position); `margins`, if given, receives each top-1 logit's lead over the second."""
    device = next(model.parameters()).device
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # little padding per forward
    out, lead = [0] * len(encoded), [0.0] * len(encoded)
    for start in range(0, len(order), ROWS_PER_FORWARD):
        chunk = order[start : start + ROWS_PER_FORWARD]
        ids, mask = pad_right([encoded[i] for i in chunk], pad_id_of(tokenizer))
        rows = torch.arange(len(chunk))
        cols = torch.tensor([len(encoded[i]) - 1 for i in chunk])
        logits = selected_logits(model, ids.to(device), mask.to(device), rows.to(device), cols.to(device))
        best = logits.float().topk(2, dim=-1)
        for k, i in enumerate(chunk):
            out[i] = int(best.indices[k, 0])
            lead[i] = float(best.values[k, 0] - best.values[k, 1])
    if margins is not None:
        margins[:] = lead
    return out


def choose_facts(model, tokenizer, candidates: Sequence[dict], n: int) -> list[CanaryFact]:
    """Up to `n` candidates the model answers top-1 with a clear lead (MIN_MARGIN: a fact known by a
    hair would flip on rounding, not on an edit), taken in turn from each relation so that all
    relations the model knows are watched."""
    texts = [c["prompt"].replace("{}", c["subject"]) for c in candidates]
    expected = [first_token(tokenizer, c["target"]) for c in candidates]
    margins: list[float] = []
    answers = top1(model, tokenizer, texts, margins)
    by_relation: dict[str, list[int]] = {}
    for i, (a, e) in enumerate(zip(answers, expected, strict=True)):
        if a == e and margins[i] >= MIN_MARGIN:
            by_relation.setdefault(candidates[i].get("relation", ""), []).append(i)
    picked: list[int] = []
    queues = [list(v) for _, v in sorted(by_relation.items())]
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return [
        CanaryFact(
            id=k + 1,
            text=texts[i],
            expected=candidates[i]["target"],
            token_id=expected[i],
            subject=candidates[i]["subject"],
            relation=candidates[i].get("relation", ""),
        )
        for k, i in enumerate(sorted(picked))
    ]


def choose(model, tokenizer, n_facts: int, text_tokens: int, n_prompts: int = 2) -> CanarySet:
    """The canary set of this (unedited) model from the bundled data."""
    text = bundled_text()
    windows = perplexity_windows(tokenizer, text, min(text_tokens, len(tokenizer(text)["input_ids"])), PPL_WINDOW)
    kept = tokenizer.decode([t for w in windows for t in w], skip_special_tokens=True)
    return CanarySet(
        choose_facts(model, tokenizer, bundled_facts(), n_facts) if n_facts else [], kept, list(GEN_PROMPTS[:n_prompts])
    )


@torch.inference_mode()
def greedy_texts(model, tokenizer, prompts: Sequence[str], new_tokens: int) -> list[str]:
    """Greedy continuations, batched (left padding), normalised like the evaluation's texts."""
    device = next(model.parameters()).device
    pad = pad_id_of(tokenizer)
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    ids, mask = pad_left(encoded, pad)
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad,
    )
    texts = [tokenizer.decode(seq, skip_special_tokens=True) for seq in out]
    return [unicodedata.normalize("NFKD", t).replace("\n\n", " ") for t in texts]


def score(model, tokenizer, canaries: CanarySet, gen_tokens: int) -> Scores:
    """Facts (top-1), perplexity of the held-out slice, entropy of greedy generation (×100)."""
    t0 = time.perf_counter()
    answers = top1(model, tokenizer, [f.text for f in canaries.facts]) if canaries.facts else []
    ids = tokenizer(canaries.text, add_special_tokens=False)["input_ids"]
    windows = perplexity_windows(tokenizer, canaries.text, len(ids), PPL_WINDOW)
    ppl = metrics.perplexity(*sequence_nll(model, windows, pad_id_of(tokenizer), batch_size=len(windows)))
    texts = greedy_texts(model, tokenizer, canaries.prompts, gen_tokens) if canaries.prompts else []
    entropy = metrics.mean_ngram_entropy(texts) if texts else 0.0
    return Scores(answers, ppl, entropy, time.perf_counter() - t0)

"""Turning facts into token ids: where the subject's last token is, what the target tokens are."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from app.editing.types import EditError

SEED_WORDS = ("The", "Therefore", "Because", "I", "You")


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    lookup: int  # index of the subject's last token


def fill(template: str, subject: str) -> str:
    # str.replace, not str.format: user prompts may hold other braces.
    return template.replace("{}", subject, 1)


def encode_with_subject(tok, template: str, subject: str) -> Encoded:
    """Tokenize `template` with the subject filled in and find the subject's last token."""
    start = template.index("{}")
    end = start + len(subject)
    enc = tok(fill(template, subject), return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    lookup = None
    for i, (a, b) in enumerate(offsets):
        if b > a and a < end:  # special tokens have empty spans
            lookup = i
    if lookup is None:
        raise EditError(f"the subject {subject!r} produced no tokens in {template!r}")
    return Encoded(list(ids), lookup)


def target_ids(tok, target: str) -> list[int]:
    """Token ids of a target continuation, written after a space as it follows the prompt."""
    text = target if target.startswith(" ") else " " + target
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise EditError(f"target {target!r} produced no tokens")
    return list(ids)


@torch.no_grad()
def generate_context_templates(lm, n_prefixes: int, length: int, seed: int = 0, top_k: int = 5) -> list[str]:
    """'{}' plus n short sampled continuations of seed words, each ending in '. {}'.

    The prefixes make the edit hold when the fact appears after other text. Sampling
    (top-k, as the reference does) gives natural text where greedy decoding of a small
    model loops; a fixed generator seed keeps them the same in every process.
    """
    tok, model = lm.tokenizer, lm.model
    gen = torch.Generator().manual_seed(seed)
    templates = ["{}"]
    for word in SEED_WORDS[:n_prefixes]:
        ids = tok(word, return_tensors="pt")["input_ids"].to(lm.device)
        for _ in range(max(1, length - ids.shape[1])):
            logits = model(input_ids=ids).logits[0, -1].float().cpu()
            top = logits.topk(top_k)
            choice = top.indices[torch.multinomial(top.values.softmax(-1), 1, generator=gen)]
            ids = torch.cat([ids, choice.view(1, 1).to(ids.device)], dim=1)
        text = tok.decode(ids[0], skip_special_tokens=True)
        templates.append(text.replace("{", " ").replace("}", " ") + ". {}")
    return templates

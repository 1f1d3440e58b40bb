"""Turning facts into token ids: where the subject's last token is, what the target tokens are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from app.editing.types import EditError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SEED_WORDS = ("The", "Therefore", "Because", "I", "You")


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    lookup: int  # index of the subject's last token


def fill(template: str, subject: str) -> str:
    # str.replace, not str.format: user prompts may hold other braces.
    return template.replace("{}", subject, 1)


def decode_text(tok: PreTrainedTokenizerBase, ids, skip_special_tokens: bool = False) -> str:
    """The text of one sequence of ids (decode's declared type also covers a batch of them)."""
    text = tok.decode(ids, skip_special_tokens=skip_special_tokens)
    if not isinstance(text, str):
        raise TypeError(f"decoding one sequence gave a {type(text).__name__}")
    return text


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


def chat_context_templates(tok, user_turns: Sequence[str]) -> list[str]:
    """One template per user turn: the turn through the model's own chat template, then the fact's
    prompt as the start of the assistant's answer ('<user>Tell me a fact.</user><assistant>{}').

    The edit then also holds where an instruct model is asked: behind the chat template's system
    and user text, in the assistant's turn. A model without a chat template gets none."""
    if not getattr(tok, "chat_template", None):
        return []
    out = []
    for turn in user_turns:
        text = tok.apply_chat_template([{"role": "user", "content": turn}], add_generation_prompt=True, tokenize=False)
        out.append(text.replace("{", " ").replace("}", " ") + "{}")
    return out


# Shown to the model as the start of a list it continues; never used as subjects themselves.
_SUBJECT_LIST_START = "Famous names: Albert Einstein, Paris, Toyota, Mount Everest, The Beatles,"


@torch.no_grad()
def generate_subjects(lm, n: int, seed: int = 0, top_k: int = 5, max_tokens: int = 8) -> list[str]:
    """n distinct subject-like names the model itself writes, continuing a comma-separated list.

    For neighbour-key preservation: other subjects to ask an edited fact's relation of, so that
    the edit is kept to its own subject. Generated, not drawn from any dataset, so they are never
    the evaluation's neighbourhood prompts; a fixed seed gives every process the same ones. Rows
    are sampled independently from the same list start (top-k), 3n of them in one batch.
    """
    tok, model = lm.tokenizer, lm.model
    enc = tok(_SUBJECT_LIST_START, return_tensors="pt").to(lm.device)
    # transformers samples from torch's global generator: seed a fork of it, leave the caller's alone.
    with torch.random.fork_rng(devices=[lm.device] if lm.device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(
            **enc,
            do_sample=True,
            top_k=top_k,
            top_p=1.0,
            temperature=1.0,
            max_new_tokens=max_tokens,
            num_return_sequences=3 * n,
            pad_token_id=tok.pad_token_id,
        )
    ids = out[:, enc["input_ids"].shape[1] :]
    seen = {"Albert Einstein", "Paris", "Toyota", "Mount Everest", "The Beatles"}
    names: list[str] = []
    for row in ids.tolist():
        name = tok.decode(row, skip_special_tokens=True).split(",")[0].split("\n")[0].split(".")[0].strip()
        if name and "{" not in name and "}" not in name and name not in seen and any(c.isalpha() for c in name):
            seen.add(name)
            names.append(name)
    return names[:n]

"""Reading the model without changing it: teacher-forced target probabilities, greedy
continuations, and the one rule for what fits the model's positions."""

from __future__ import annotations

import torch

from app.editing.batching import pad_right
from app.editing.model import LoadedModel
from app.editing.prompts import decode_text, fill, target_ids
from app.editing.types import EditError, EditRequest


def length_problem(
    lm: LoadedModel, prompt_tokens: int, max_new_tokens: int, name: str = "max_new_tokens"
) -> str | None:
    """The one context rule for generation: prompt tokens + new tokens within the model's positions."""
    n_ctx = lm.context_length
    n = prompt_tokens + max_new_tokens
    if n_ctx is None or n <= n_ctx:
        return None
    return (
        f"the prompt is {prompt_tokens} tokens and {name} is {max_new_tokens}: {n} tokens, "
        f"but the model reads at most {n_ctx}; shorten the prompt or ask for fewer tokens"
    )


def generate_problem(lm: LoadedModel, prompt: str, max_new_tokens: int) -> str | None:
    """None when prompt + max_new_tokens fit the model's positions, else what to change."""
    if lm.context_length is None:
        return None
    return length_problem(lm, len(lm.tokenizer(prompt).input_ids), max_new_tokens)


def fact_length_problem(lm: LoadedModel, templates: list[str], request: EditRequest) -> str | None:
    """A fact is read after its longest context prefix, with its target appended: all of it must fit
    the model's positions. Returns a sentence saying by how much it does not, else None."""
    n_ctx = lm.context_length
    if n_ctx is None:
        return None
    tok = lm.tokenizer
    prefix = max((len(tok(fill(t, "")).input_ids) for t in templates), default=0)
    n = prefix + len(tok(request.text).input_ids) + len(tok(" " + request.target_new).input_ids)
    if n > n_ctx:
        return (
            f"the fact is {n} tokens long with its context prefix and target; the model reads at most "
            f"{n_ctx} tokens: shorten the prompt, subject or target"
        )
    return None


@torch.no_grad()
def target_probabilities(lm: LoadedModel, requests: list[EditRequest]) -> list[float]:
    """P(target_new | prompt): geometric mean of the target tokens' probabilities, teacher-forced."""
    tok, dev = lm.tokenizer, lm.device
    rows, spans = [], []
    for r in requests:
        prompt = tok(r.text)["input_ids"]
        tgt = target_ids(tok, r.target_new)
        rows.append(prompt + tgt)
        spans.append((len(prompt), tgt))
    ids, mask = pad_right(rows, tok.pad_token_id)
    logp = torch.log_softmax(lm.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float(), -1)
    out = []
    for i, (start, tgt) in enumerate(spans):
        lp = logp[i, start - 1 : start - 1 + len(tgt)].gather(1, torch.tensor(tgt, device=dev)[:, None])
        out.append(float(lp.mean().exp()))
    return out


@torch.no_grad()
def generate(lm: LoadedModel, prompt: str, max_new_tokens: int = 20) -> str:
    """Greedy continuation of `prompt` from the current weights."""
    problem = generate_problem(lm, prompt, max_new_tokens)
    if problem:
        raise EditError(problem)
    tok = lm.tokenizer
    enc = tok(prompt, return_tensors="pt").to(lm.device)
    out = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return decode_text(tok, out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)

"""What a user reads: greedy answers to prompts and chat questions, and whether they show a fact.

The matching rule, used alike by `kedit eval`, by the worker's shown / not-shown check and by the
editor's own check of what it wrote (settings.reedit_passes):

- both texts are compared case-folded, after Unicode NFKC normalisation, with runs of whitespace
  collapsed and the typographic apostrophes and quotes folded to their ASCII forms;
- an answer *shows* a target when the target occurs in it starting at a word boundary (the start
  of the text or after a non-alphanumeric character). The end need not be a boundary, so a word
  that extends the target counts: "Australian" shows "Australia", "Londoners" shows "London";
  "Ausland" does not show "Australia", and "Paris" is not shown by "Comparison";
- an answer *begins with* a target when, after leading whitespace and punctuation ("the" is not
  skipped), it shows the target at its very start.

An empty target is shown by nothing. These rules are unit-tested on fixed texts
(tests/editing/test_answers.py).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import torch

from app.editing.batching import chunks_by_length, pad_id_of, pad_left

_FOLD = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " "})
_SPACE = re.compile(r"\s+")
_LEADING = re.compile(r"^[\W_]+")


def normalise(text: str) -> str:
    """The form both sides of a match are compared in: NFKC, folded quotes, one space, case-folded."""
    text = unicodedata.normalize("NFKC", text).translate(_FOLD)
    return _SPACE.sub(" ", text).strip().casefold()


def shows(answer: str, target: str) -> bool:
    """True when `target` occurs in `answer` starting at a word boundary (see the module doc)."""
    needle = normalise(target)
    if not needle:
        return False
    hay = normalise(answer)
    start = hay.find(needle)
    while start != -1:
        if start == 0 or not hay[start - 1].isalnum():
            return True
        start = hay.find(needle, start + 1)
    return False


def begins_with(answer: str, target: str) -> bool:
    """True when the answer, past leading whitespace and punctuation, starts with `target`."""
    needle = normalise(target)
    return bool(needle) and _LEADING.sub("", normalise(answer)).startswith(needle)


# --- greedy answers ---------------------------------------------------------------------------


def chat_prompt(tokenizer, question: str) -> str:
    """The question as one user turn through the model's own chat template, ready for the answer."""
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


@torch.inference_mode()
def greedy_answers(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 10, batch_size: int = 32, chat: bool = False
) -> list[str]:
    """The greedy continuation of each prompt (only the new text), batched with left padding.

    With `chat=True` each prompt is a question asked as one user turn through the chat template
    (the special tokens the template writes are its own, so none are added). Generation stops at
    EOS; what follows it is dropped.
    """
    texts = [chat_prompt(tokenizer, p) for p in prompts] if chat else list(prompts)
    encoded = [tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in texts]
    device = next(model.parameters()).device
    pad, eos = pad_id_of(tokenizer), tokenizer.eos_token_id
    out = [""] * len(texts)
    chunks, _ = chunks_by_length([len(e) for e in encoded], batch_size)
    for idx in chunks:
        ids, mask = pad_left([encoded[i] for i in idx], pad)
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
        )
        for row, i in enumerate(idx):
            new = gen[row, ids.shape[1] :].tolist()
            if eos is not None and eos in new:
                new = new[: new.index(eos)]
            out[i] = tokenizer.decode(new, skip_special_tokens=True)
    return out

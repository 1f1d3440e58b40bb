"""Model health beyond the edited facts: held-out perplexity and generation entropy.

A model that collapses under many edits shows it here first: perplexity on ordinary text
climbs and free generation turns repetitive (low n-gram entropy). Both are measured on
fixed inputs, so numbers from different checkpoints and runs compare.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from app.editing.batching import pad_id_of, pad_right
from app.eval import metrics
from app.eval.paths import wikitext_path
from app.eval.scoring import generation_entropy, selected_logits

# Fixed, generic prompts for free generation (written for kedit; not from any dataset).
HEALTH_PROMPTS = (
    "The history of the city begins",
    "In the morning, the scientists",
    "My favourite book is",
    "The main export of the country is",
    "She walked into the room and",
    "The most important thing about music is",
    "During the war, the army",
    "The recipe calls for",
    "Students at the university often",
    "The river flows through",
    "According to the report, the company",
    "The old man told the children",
    "Football is a sport that",
    "The museum is famous for",
    "When the train arrived at the station,",
    "The new law requires",
    "In the summer of 1990,",
    "The painting shows",
    "Doctors recommend that people",
    "The election results showed",
)

_HEADING = re.compile(r"^\s*=.*=\s*$")


@dataclass(frozen=True)
class HealthConfig:
    ppl_tokens: int = 4096  # tokens of WikiText scored (a fixed slice from the start)
    ppl_window: int = 256  # scored in non-overlapping windows of this many tokens
    gen_max_len: int = 100
    gen_prompts: tuple[str, ...] = HEALTH_PROMPTS
    corpus: str | None = None  # defaults to shared/data/corpus/wikitext103_valid.tokens.txt
    seed: int = 0


def wikitext_text(path: Path | str, max_chars: int) -> str:
    """The start of a WikiText file as plain prose: headings and blank lines dropped,
    WikiText's '@-@' / '@,@' / '@.@' spacing undone."""
    out, size = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or _HEADING.match(line):
                continue
            line = line.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
            out.append(line)
            size += len(line) + 1
            if size >= max_chars:
                break
    return "\n".join(out)


def perplexity_windows(tokenizer, text: str, n_tokens: int, window: int) -> list[list[int]]:
    """The first `n_tokens` tokens of `text`, cut into windows (each with BOS if the tokenizer adds one)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < n_tokens:
        raise ValueError(f"the perplexity text has {len(ids)} tokens, fewer than the {n_tokens} asked for")
    ids = ids[:n_tokens]
    with_special = tokenizer("a")["input_ids"]
    bos = tokenizer.bos_token_id
    prefix = [bos] if bos is not None and with_special and with_special[0] == bos else []
    return [prefix + ids[i : i + window] for i in range(0, n_tokens, window) if len(ids[i : i + window]) > 1]


@torch.inference_mode()
def sequence_nll(model, windows: Sequence[Sequence[int]], pad_id: int = 0, batch_size: int = 4) -> tuple[float, int]:
    """(sum of NLL in nats, number of predicted tokens) over all windows; every token
    but each window's first is predicted from the ones before it."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        ids, mask = pad_right(chunk, pad_id)
        rows = torch.cat([torch.full((len(w) - 1,), r) for r, w in enumerate(chunk)])
        cols = torch.cat([torch.arange(len(w) - 1) for w in chunk])
        ids, mask = ids.to(device), mask.to(device)
        rows, cols = rows.to(device), cols.to(device)
        logits = selected_logits(model, ids, mask, rows, cols)
        targets = ids[rows, cols + 1]
        total += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        count += len(rows)
    return total, count


def wikitext_perplexity(model, tokenizer, cfg: HealthConfig = HealthConfig()) -> float:
    path = cfg.corpus or wikitext_path()
    # ~4 characters per token in English prose; read generously, then cut by tokens.
    text = wikitext_text(path, max_chars=cfg.ppl_tokens * 8)
    windows = perplexity_windows(tokenizer, text, cfg.ppl_tokens, cfg.ppl_window)
    return metrics.perplexity(*sequence_nll(model, windows, pad_id_of(tokenizer)))


def measure_health(model, tokenizer, cfg: HealthConfig = HealthConfig()) -> dict[str, float]:
    """{'perplexity': WikiText perplexity, 'gen_entropy': GE (×100) on the fixed prompts}."""
    return {
        "perplexity": wikitext_perplexity(model, tokenizer, cfg),
        "gen_entropy": generation_entropy(
            model, tokenizer, list(cfg.gen_prompts), max_len=cfg.gen_max_len, seed=cfg.seed
        ),
    }

"""Model-facing scoring: batched teacher forcing and sampled generation on a HF causal LM.

Teacher forcing: each (prompt, target) pair becomes one sequence, prompt tokens then the
target's tokens (the target written after a space, as the reference code does). Pairs are
sorted by length, right-padded with an attention mask, and only the positions that
predict a target token go through the output head (the full-vocabulary logits of every
position would cost memory and time for nothing).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from app.editing.batching import chunks_by_length, pad_id_of, pad_left, pad_right
from app.eval import metrics
from app.eval.data import CounterFactRecord, ZsreRecord

# Architectures whose logits are exactly output_head(base_model(...).last_hidden_state):
# for these we apply the head at the needed positions only. Others take the full path.
_HEAD_ONLY_SAFE = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "gptj", "gpt_neox", "phi3", "olmo", "olmo2"}


@dataclass(frozen=True)
class TeacherForced:
    """What the model did on one (prompt, target) pair."""

    target_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # log P(target token j | prompt, target tokens < j), nats
    argmax: tuple[int, ...]  # the model's top-1 token at each target position

    @property
    def mean_nll(self) -> float:
        return -sum(self.logprobs) / len(self.logprobs)

    @property
    def accuracy(self) -> float:
        return metrics.token_accuracy(self.argmax, self.target_ids)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def encode_pair(tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) for `prompt + " " + target`.

    Tokenised jointly, as the reference does, when the prompt's own tokens are a prefix
    of the joint tokens (true for byte-level BPE); otherwise the target is tokenised alone.
    """
    prompt_ids = tokenizer(prompt)["input_ids"]
    joint = tokenizer(f"{prompt} {target}")["input_ids"]
    if joint[: len(prompt_ids)] == prompt_ids and len(joint) > len(prompt_ids):
        target_ids = joint[len(prompt_ids) :]
    else:
        target_ids = tokenizer(f" {target}", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    # Tokenizers that append EOS would make it a "target token"; it is not part of the answer.
    if (
        eos is not None
        and len(target_ids) > 1
        and target_ids[-1] == eos
        and not target.endswith(tokenizer.eos_token or "\0")
    ):
        target_ids = target_ids[:-1]
    if not target_ids:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return list(prompt_ids), list(target_ids)


def selected_logits(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """Float32 logits at positions (rows[i], cols[i]) only, shape (len(rows), vocab)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    base = getattr(model, "base_model", None)
    if model_type in _HEAD_ONLY_SAFE and head is not None and base is not None and base is not model:
        hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return head(hidden[rows, cols]).float()
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return logits[rows, cols].float()


def _carriers(encoded: Sequence[tuple[list[int], list[int]]]) -> dict[int, list[int]]:
    """Which pairs need a sequence of their own: {carrier: [riders]}.

    A one-token target's log-probability is read at the last prompt position, which any
    sequence starting with the same prompt tokens computes (causal attention: what follows
    cannot change it). So per prompt, every multi-token target gets its own sequence and
    one-token targets ride on the first of them; CounterFact scores each prompt against two
    targets, mostly single tokens, so this nearly halves the work."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (prompt_ids, _) in enumerate(encoded):
        groups.setdefault(tuple(prompt_ids), []).append(i)
    plan: dict[int, list[int]] = {}
    for members in groups.values():
        own = [i for i in members if len(encoded[i][1]) > 1] or members[:1]
        plan.update({i: [] for i in own})
        plan[own[0]] += [i for i in members if i not in own]
    return plan


@torch.inference_mode()
def teacher_force(
    model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 32, progress: str | None = None
) -> list[TeacherForced]:
    """Score many (prompt, target) pairs; results in the order of `pairs`.
    `progress`: a label to show a progress bar with (large sets take minutes on a CPU)."""
    encoded = [encode_pair(tokenizer, p, t) for p, t in pairs]
    plan = _carriers(encoded)
    carriers = list(plan)  # the pairs that get a sequence of their own
    chunks, _ = chunks_by_length([len(encoded[i][0]) + len(encoded[i][1]) for i in carriers], batch_size)
    out: list[TeacherForced | None] = [None] * len(encoded)
    device, pad = _device(model), pad_id_of(tokenizer)
    for chunk in tqdm(chunks, desc=progress, unit="batch", leave=False, disable=progress is None or len(chunks) < 20):
        idx = [carriers[c] for c in chunk]
        seqs = [encoded[i][0] + encoded[i][1] for i in idx]
        ids, mask = pad_right(seqs, pad)
        ids, mask = ids.to(device), mask.to(device)
        rows: list[int] = []
        cols: list[int] = []
        spans: list[tuple[int, int]] = []
        for r, i in enumerate(idx):
            n_prompt, n_target = len(encoded[i][0]), len(encoded[i][1])
            spans.append((len(rows), n_target))
            for j in range(n_target):
                rows.append(r)
                cols.append(n_prompt + j - 1)  # the position that predicts target token j
        logits = selected_logits(model, ids, mask, torch.tensor(rows, device=device), torch.tensor(cols, device=device))
        logp = torch.log_softmax(logits, dim=-1)
        for (offset, _), i in zip(spans, idx, strict=True):
            for k in [i, *plan[i]]:  # the carrier, then the one-token targets on its first position
                tgt = torch.tensor(encoded[k][1], device=device)
                m = len(encoded[k][1])
                lp = logp[offset : offset + m].gather(1, tgt[:, None]).squeeze(1)
                top = logp[offset : offset + m].argmax(dim=-1)
                out[k] = TeacherForced(tuple(encoded[k][1]), tuple(lp.tolist()), tuple(top.tolist()))
    return out  # type: ignore[return-value]


def _score_unique(
    model, tokenizer, pairs: list[tuple[str, str]], batch_size: int, progress: str | None = None
) -> dict[tuple[str, str], TeacherForced]:
    unique = list(dict.fromkeys(pairs))
    return dict(zip(unique, teacher_force(model, tokenizer, unique, batch_size, progress), strict=True))


# --- CounterFact ------------------------------------------------------------------------


def counterfact_record_details(
    model,
    tokenizer,
    records: Sequence[CounterFactRecord],
    batch_size: int = 32,
    rewrite_only: bool = False,
    progress: str | None = None,
) -> list[dict[str, float]]:
    """Per record: its ES/PS/NS shares (0..1). `rewrite_only` scores ES alone (cheap, live display)."""
    pairs: list[tuple[str, str]] = []
    for r in records:
        pairs += [(r.rewrite_prompt, r.target_new), (r.rewrite_prompt, r.target_true)]
        if not rewrite_only:
            for p in r.paraphrase_prompts:
                pairs += [(p, r.target_new), (p, r.target_true)]
            for p in r.neighborhood_prompts:
                pairs += [(p, r.target_new), (p, r.neighborhood_true)]
    scored = _score_unique(model, tokenizer, pairs, batch_size, progress)

    def nll_pairs(prompts, true):
        return [(scored[(p, r.target_new)].mean_nll, scored[(p, true)].mean_nll) for p in prompts]

    details = []
    for r in records:
        rewrite = nll_pairs([r.rewrite_prompt], r.target_true)
        if rewrite_only:
            details.append({"es": metrics.share(metrics.prefers(n, t) for n, t in rewrite)})
            continue
        details.append(
            metrics.counterfact_record_scores(
                rewrite,
                nll_pairs(r.paraphrase_prompts, r.target_true),
                nll_pairs(r.neighborhood_prompts, r.neighborhood_true),
            )
        )
    return details


def score_counterfact(model, tokenizer, records: Sequence[CounterFactRecord], batch_size: int = 32) -> dict[str, float]:
    """ES, PS, NS, S in percent (see metrics.py)."""
    return metrics.aggregate_counterfact(counterfact_record_details(model, tokenizer, records, batch_size))


def rewrite_success(model, tokenizer, records: Sequence[CounterFactRecord], batch_size: int = 32) -> float:
    """ES alone, in percent: cheap enough to show live after every batch."""
    details = counterfact_record_details(model, tokenizer, records, batch_size, rewrite_only=True)
    return 100.0 * metrics.mean(d["es"] for d in details)


# --- zsRE ---------------------------------------------------------------------------------

ZSRE_KEYS = ("edit_acc", "paraphrase_acc", "locality_acc", "locality_kept")


def zsre_record_details(
    model,
    tokenizer,
    records: Sequence[ZsreRecord],
    batch_size: int = 32,
    reference_loc_argmax: dict[int, Sequence[int]] | None = None,
    progress: str | None = None,
) -> list[dict]:
    """Per record: token accuracies (0..1) and the locality argmax (kept to compare later).

    `locality_acc` is the reference definition: argmax == the NQ answer's tokens.
    `locality_kept` (only with `reference_loc_argmax`, the unedited model's argmax per
    case_id) is the share of those positions where the argmax did not change.
    """
    pairs: list[tuple[str, str]] = []
    for r in records:
        pairs += [(r.question, r.target), (r.rephrase, r.target), (r.loc_prompt, r.loc_answer)]
    scored = _score_unique(model, tokenizer, pairs, batch_size, progress)
    details = []
    for r in records:
        loc = scored[(r.loc_prompt, r.loc_answer)]
        d = {
            "edit_acc": scored[(r.question, r.target)].accuracy,
            "paraphrase_acc": scored[(r.rephrase, r.target)].accuracy,
            "locality_acc": loc.accuracy,
            "loc_argmax": list(loc.argmax),
        }
        if reference_loc_argmax is not None and r.case_id in reference_loc_argmax:
            d["locality_kept"] = metrics.token_accuracy(loc.argmax, list(reference_loc_argmax[r.case_id]))
        details.append(d)
    return details


def aggregate_zsre(details: Sequence[dict]) -> dict[str, float]:
    out = {k: 100.0 * metrics.mean(d[k] for d in details) for k in ("edit_acc", "paraphrase_acc", "locality_acc")}
    if details and all("locality_kept" in d for d in details):
        out["locality_kept"] = 100.0 * metrics.mean(d["locality_kept"] for d in details)
    return out


# --- generation -----------------------------------------------------------------------------


@torch.inference_mode()
def generate_ids(
    model, tokenizer, prompts: Sequence[str], max_len: int = 100, top_k: int = 5, seed: int = 0, batch_size: int = 32
) -> list[list[int]]:
    """Top-k sampled token ids per prompt: the prompt's ids then the continuation's, at most
    `max_len` tokens in all (the reference's generate_fast settings: top-k 5, 100 tokens).

    Seeded with a forked RNG, so the same weights give the same texts and the caller's
    random state is untouched. Generation stops early at EOS (the reference does not).
    """
    device, pad = _device(model), pad_id_of(tokenizer)
    out: list[list[int]] = [[] for _ in prompts]
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    chunks, _ = chunks_by_length([len(e) for e in encoded], batch_size)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for idx in chunks:
            shortest = min(len(encoded[i]) for i in idx)
            # Left padding: every prompt ends at the same column, so generation is batched.
            ids, mask = pad_left([encoded[i] for i in idx], pad)
            width = ids.shape[1]
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=True,
                top_k=top_k,
                top_p=1.0,
                temperature=1.0,
                max_new_tokens=max(1, max_len - shortest),
                pad_token_id=pad,
            )
            for r, i in enumerate(idx):
                seq = list(encoded[i]) + gen[r, width:].tolist()
                eos = tokenizer.eos_token_id
                if eos is not None and eos in seq[len(encoded[i]) :]:  # drop EOS and the padding after it
                    seq = seq[: seq.index(eos, len(encoded[i]))]
                out[i] = seq[:max_len]  # at most max_len tokens, prompt included
    return out


def generate_texts(
    model, tokenizer, prompts: Sequence[str], max_len: int = 100, top_k: int = 5, seed: int = 0, batch_size: int = 32
) -> list[str]:
    """Sampled texts (prompt + continuation), normalised as the reference does (NFKD, no blank lines)."""
    ids = generate_ids(model, tokenizer, prompts, max_len, top_k, seed, batch_size)
    texts = [tokenizer.decode(seq, skip_special_tokens=True) for seq in ids]
    return [unicodedata.normalize("NFKD", t).replace("\n\n", " ") for t in texts]


def generation_entropy(model, tokenizer, prompts: Sequence[str], max_len: int = 100, seed: int = 0) -> float:
    """GE (×100) of sampled texts from `prompts`."""
    return metrics.mean_ngram_entropy(generate_texts(model, tokenizer, prompts, max_len=max_len, seed=seed))


def counterfact_generation_prompts(records: Sequence[CounterFactRecord], n: int) -> list[str]:
    """`n` generation prompts spread over the records: each record's first prompt, then
    each record's second, ... so a small sample covers many different facts."""
    out: list[str] = []
    depth = max((len(r.generation_prompts) for r in records), default=0)
    for j in range(depth):
        for r in records:
            if j < len(r.generation_prompts):
                out.append(r.generation_prompts[j])
                if len(out) == n:
                    return out
    return out

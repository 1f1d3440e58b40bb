"""Token-by-token decoding with a per-request random generator (temperature / top-p sampling).

transformers' generate and its continuous batching both draw from torch's global RNG, shared by
every request in the process, so a `seed` given with one request could not reproduce its text
while other requests run. This loop draws from its own `torch.Generator`: same seed, same
weights, same text, whatever else the process does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from app.editing.fast_forward import _cache_keyword

if TYPE_CHECKING:
    from app.editing.model import CausalLM


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probabilities sum to at least top_p (nucleus sampling)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    cum = torch.softmax(sorted_logits, -1).cumsum(-1)
    # A token is dropped when the tokens before it already reach top_p; the first one always stays.
    drop = (cum - torch.softmax(sorted_logits, -1)) >= top_p
    drop[..., 0] = False  # also when top_p rounds to 0 in float32 (a denormal such as 5e-324)
    sorted_logits[drop] = float("-inf")
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


@torch.no_grad()
def sample_tokens(
    model: CausalLM,
    input_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    eos_token_ids: Sequence[int] = (),
) -> Iterator[int]:
    """Yield sampled token ids one by one, stopping after an end-of-sequence token or max_new_tokens."""
    if temperature <= 0:
        raise ValueError("sample_tokens samples; use greedy decoding for temperature 0")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    ids = torch.tensor([list(input_ids)], device=device)
    cache = DynamicCache(config=model.config)
    cache_kw = {_cache_keyword(model): cache}  # the KV-cache argument's name moved in transformers 5.2x
    eos = set(eos_token_ids)
    for _ in range(max_new_tokens):
        # float64 and shifted so the largest is 0 before dividing: a tiny temperature (3e-53 is
        # valid JSON and rounds to 0 in float32) sends the others to -inf, never to inf - inf = nan.
        logits = model(input_ids=ids, use_cache=True, **cache_kw).logits[0, -1].double()
        logits = top_p_filter((logits - logits.max()) / temperature, top_p)
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        yield token
        if token in eos:
            return
        ids = torch.tensor([[token]], device=device)

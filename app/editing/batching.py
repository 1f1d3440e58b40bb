"""Running many token sequences through a model at once: padded batches with their attention
masks, chunks of similar length, and forward passes that stop at the block they need.

Used by the editing core (keys, key statistics, target vectors, the editor's read-outs) and by
the evaluation's scoring, so that each of these rules is written once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def pad_right(
    seqs: Sequence[Sequence[int]], pad_id: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), each row starting at column 0: position i is token i of every row."""
    width = max(len(s) for s in seqs) if width is None else width
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
            mask[i, : len(s)] = 1
    return ids, mask


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), each row ending at the last column: the next token of every row is
    predicted at the same column (batched generation, cached prefixes)."""
    width = max(len(s) for s in seqs) if width is None else width
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def pad_id_of(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, else its EOS (padding is masked out anyway)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    return 0


def chunks_by_length(lengths: Sequence[int], size: int) -> tuple[list[list[int]], torch.Tensor]:
    """Indices sorted by length, in chunks of at most `size`: each padded batch holds sequences of
    similar length, so little padding is computed. Also returns `back`, the index that puts the
    chunks' results (concatenated in chunk order) back in input order: `torch.cat(results)[back]`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return [order[i : i + size] for i in range(0, len(order), size)], back


class StopForward(Exception):
    """Raised by a hook to end a forward pass early: the blocks above it do not run."""


def forward_until(module: nn.Module, forward: Callable[[], object], before: bool = False):
    """Run `forward()` only as far as `module`, and return what `module` saw.

    `before=False`: the module runs and its output is returned. `before=True`: it does not run;
    its inputs are returned as (args, kwargs), so that it and the modules after it can be called
    directly later.
    """
    seen: dict = {}

    def after_hook(mod, args, output):
        seen["out"] = output
        raise StopForward

    def before_hook(mod, args, kwargs):
        seen["out"] = (args, kwargs)
        raise StopForward

    if before:
        handle = module.register_forward_pre_hook(before_hook, with_kwargs=True)
    else:
        handle = module.register_forward_hook(after_hook)
    try:
        forward()
    except StopForward:
        pass
    finally:
        handle.remove()
    if "out" not in seen:
        raise RuntimeError(f"the forward pass never reached {type(module).__name__}")
    return seen["out"]


def hidden_of(output) -> torch.Tensor:
    """The hidden states in a block's output (a tensor, or a tuple that starts with it)."""
    return output[0] if isinstance(output, tuple) else output

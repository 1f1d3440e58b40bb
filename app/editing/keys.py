"""Reading hidden states at the subject's last token: the keys k (inputs of the edited
down-projections) and the residual stream at the last edited block.

The forward pass stops at the highest block it needs: nothing above it matters here.
"""

from __future__ import annotations

from functools import partial

import torch

from app.editing.batching import chunks_by_length, forward_until, hidden_of, pad_right
from app.editing.model import LoadedModel
from app.editing.prompts import Encoded


@torch.no_grad()
def states_at_lookup(
    lm: LoadedModel,
    encoded: list[Encoded],
    key_layers: list[int],
    output_layer: int | None = None,
    max_rows: int = 128,
) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """Keys (N×f per layer) and, if asked, the output of block `output_layer` (N×d), at each lookup token."""
    stop_layer = max(key_layers + ([output_layer] if output_layer is not None else []))
    keys: dict[int, list[torch.Tensor]] = {layer: [] for layer in key_layers}
    outputs: list[torch.Tensor] = []
    chunks, back = chunks_by_length([len(e.ids) for e in encoded], max_rows)
    for idx in chunks:
        chunk = [encoded[i] for i in idx]
        ids, mask = pad_right([e.ids for e in chunk], lm.tokenizer.pad_token_id)
        rows = torch.arange(len(chunk))
        cols = torch.tensor([e.lookup for e in chunk])

        def key_hook(layer, rows, cols):
            def hook(module, args):
                keys[layer].append(args[0][rows, cols].float())

            return hook

        hooks = [
            lm.adapter.edited_module(lm.model, layer).register_forward_pre_hook(key_hook(layer, rows, cols))
            for layer in key_layers
        ]
        try:
            out = forward_until(
                lm.adapter.block(lm.model, stop_layer),
                partial(
                    lm.model.base_model, input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False
                ),
            )
        finally:
            for h in hooks:
                h.remove()
        if output_layer is not None:
            outputs.append(hidden_of(out)[rows, cols].float())
    back = back.to(lm.device)
    out = torch.cat(outputs)[back] if outputs else None
    return {layer: torch.cat(v)[back] for layer, v in keys.items()}, out

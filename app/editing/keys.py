"""Reading hidden states at the subject's last token: the keys k (inputs of the edited
down-projections) and the residual stream at the last edited block.

The forward pass stops at the highest block it needs: nothing above it matters here.
"""
from __future__ import annotations

import torch

from app.editing.model import LoadedModel
from app.editing.prompts import Encoded


class _StopForward(Exception):
    pass


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
    keys: dict[int, list[torch.Tensor]] = {l: [] for l in key_layers}
    outputs: list[torch.Tensor] = []
    pad = lm.tokenizer.pad_token_id
    # Chunks of similar length: little padding is computed. Results go back to input order.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    for start in range(0, len(order), max_rows):
        chunk = [encoded[i] for i in order[start : start + max_rows]]
        width = max(len(e.ids) for e in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, e in enumerate(chunk):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            mask[i, : len(e.ids)] = 1
        rows = torch.arange(len(chunk))
        cols = torch.tensor([e.lookup for e in chunk])
        hooks = []

        def key_hook(layer):
            def hook(module, args):
                keys[layer].append(args[0][rows, cols].float())
            return hook

        def stop_hook(module, args, output):
            if output_layer is not None:
                hs = output[0] if isinstance(output, tuple) else output
                outputs.append(hs[rows, cols].float())
            raise _StopForward

        for layer in key_layers:
            hooks.append(lm.adapter.edited_module(lm.model, layer).register_forward_pre_hook(key_hook(layer)))
        hooks.append(lm.adapter.block(lm.model, stop_layer).register_forward_hook(stop_hook))
        try:
            lm.model.base_model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False)
        except _StopForward:
            pass
        finally:
            for h in hooks:
                h.remove()
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(order))
    back = back.to(lm.device)
    out = torch.cat(outputs)[back] if outputs else None
    return {l: torch.cat(v)[back] for l, v in keys.items()}, out

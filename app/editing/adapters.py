"""Where each architecture keeps the parts ENCORE touches.

An adapter names the transformer blocks (whose outputs are the layer outputs), the
MLP down-projection inside each block (the matrix W ∈ R^{d×f} that gets edited),
whether that weight is stored transposed (GPT-2's Conv1D keeps (in, out) = (f, d)),
and the final norm. The LM head is `model.get_output_embeddings()`, which every
causal LM has.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from app.editing.types import EditError


@dataclass(frozen=True)
class ArchAdapter:
    family: str
    blocks: str  # dotted path from the model to the list of blocks
    down_proj: str  # dotted path from a block to the edited linear map
    transposed: bool  # weight stored as (f, d) instead of (d, f)
    final_norm: str  # dotted path from the model to the norm before the LM head

    def block(self, model: nn.Module, layer: int) -> nn.Module:
        return _get(model, self.blocks)[layer]

    def num_layers(self, model: nn.Module) -> int:
        return len(_get(model, self.blocks))

    def edited_module(self, model: nn.Module, layer: int) -> nn.Module:
        return _get(self.block(model, layer), self.down_proj)

    def weight(self, model: nn.Module, layer: int) -> torch.Tensor:
        """The edited weight as a d×f view: writes through it change the model."""
        w = self.edited_module(model, layer).weight
        if not isinstance(w, torch.Tensor):  # adapter_for() checked it is one
            raise EditError(f"layer {layer}'s {self.down_proj} has no weight matrix")
        return w.T if self.transposed else w

    def norm(self, model: nn.Module) -> nn.Module:
        return _get(model, self.final_norm)


LLAMA = ArchAdapter("llama", "model.layers", "mlp.down_proj", transposed=False, final_norm="model.norm")
GPT2 = ArchAdapter("gpt2", "transformer.h", "mlp.c_proj", transposed=True, final_norm="transformer.ln_f")
GPTJ = ArchAdapter("gptj", "transformer.h", "mlp.fc_out", transposed=False, final_norm="transformer.ln_f")

# model_type (config.json) -> adapter. Llama-shaped families share module names.
BY_MODEL_TYPE = {
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "qwen3": LLAMA,
    "gemma": LLAMA,
    "gemma2": LLAMA,
    "olmo": LLAMA,
    "olmo2": LLAMA,
    "gpt2": GPT2,
    "gptj": GPTJ,
}


def _get(obj: object, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _has(obj: object, dotted: str) -> bool:
    try:
        _get(obj, dotted)
        return True
    except AttributeError:
        return False


def adapter_for(model: nn.Module) -> ArchAdapter:
    """Pick the adapter by model_type, else by the modules the model actually has."""
    model_type = getattr(model.config, "model_type", "?")
    candidates = [BY_MODEL_TYPE[model_type]] if BY_MODEL_TYPE.get(model_type) else [LLAMA, GPT2, GPTJ]
    for adapter in candidates:
        if (
            _has(model, adapter.blocks)
            and len(_get(model, adapter.blocks)) > 0
            and _has(adapter.block(model, 0), adapter.down_proj)
            and _has(model, adapter.final_norm)
        ):
            weight = getattr(adapter.edited_module(model, 0), "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() == 2:
                return adapter
    looked_for = ", ".join(f"{a.blocks}.<i>.{a.down_proj} + {a.final_norm}" for a in candidates)
    raise EditError(
        f"unsupported architecture {model_type!r} ({type(model).__name__}): kedit edits the MLP output "
        f"projection of each block and found none of: {looked_for}. Supported families: Llama "
        f"(Llama, SmolLM2, Qwen2, Mistral), GPT-2, GPT-J."
    )

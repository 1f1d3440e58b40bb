"""Small builders shared by the unit tests of the editing core."""

from __future__ import annotations

from pathlib import Path

import torch

from app.editing.model import LoadedModel, wrap_model
from app.editing.settings import EditSettings
from app.editing.stats import collect_key_stats
from app.editing.types import EditRequest
from tests.utils.tiny import TRAINING_TEXT, build_tiny_model

FACTS = [
    EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
    EditRequest("{} is the capital of", "Paris", "Italy", "France"),
    EditRequest("{} plays", "Michael Jordan", "soccer", "basketball"),
]
TEMPLATES = ["{}", "The river is in Paris. {}", "Therefore the answer is yes. {}"]


def tiny_lm(arch: str = "llama", seed: int = 0) -> LoadedModel:
    model, tok = build_tiny_model(arch, seed=seed)
    return wrap_model(model, tok, name=f"tiny-{arch}-{seed}")


def tiny_settings(**overrides) -> EditSettings:
    base = dict(
        layers=(1, 2, 3), lambda_p=10.0, lambda_n=1.0, stats_tokens=1000, max_steps=8, n_prefixes=2, prefix_tokens=6
    )
    return EditSettings(**{**base, **overrides})


def tiny_stats(lm: LoadedModel, layers, tmp_path: Path) -> dict[int, torch.Tensor]:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TRAINING_TEXT * 10))
    return collect_key_stats(lm, list(layers), corpus, tokens=1000, progress=False)

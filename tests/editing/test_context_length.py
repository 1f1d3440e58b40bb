"""Prompts and facts longer than the model's positions are refused with a reason, on every
architecture (GPT-2's learned position embeddings fail with an IndexError beyond them)."""

import pytest
import torch

from app.editing.editor import Editor
from app.editing.reading import generate, generate_problem
from app.editing.types import EditError, EditRequest
from tests.utils.editing import FACTS, tiny_lm, tiny_settings

EMOJI = "\U0001f600"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_beyond_the_context_is_refused_before_it_runs(arch):
    lm = tiny_lm(arch)
    assert lm.context_length == 256
    editor = Editor(lm, tiny_settings(), replica=True)
    # What the probe sent: 300 emoji, inside the 512-character bound, far beyond 256 positions.
    with pytest.raises(EditError, match="the model reads at most 256; shorten the prompt"):
        generate(editor.lm, EMOJI * 300, 8)
    n = len(lm.tokenizer("The capital of France is").input_ids)
    with pytest.raises(EditError, match=f"{n + 256 - n + 1} tokens"):
        generate(editor.lm, "The capital of France is", 256 - n + 1)
    assert generate_problem(editor.lm, "The capital of France is", 256 - n) is None  # exactly full: allowed
    assert isinstance(generate(editor.lm, "The capital of France is", 2), str)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_fact_beyond_the_context_is_refused_and_named(arch):
    lm = tiny_lm(arch)
    s = tiny_settings(max_steps=2)
    # The refusal comes before any solve, so any C₀ of the right shape will do.
    f = Editor(lm, s, replica=True).base[s.layers[0]].shape[1]
    editor = Editor(lm, s, {layer: torch.eye(f) for layer in s.layers})
    long = EditRequest("{} " + EMOJI * 120, "Paris", "Japan")
    with pytest.raises(EditError, match="fact 2 of the batch: the fact is \\d+ tokens long .* at most 256 tokens"):
        editor.apply([FACTS[0], long], batch_id=1)
    assert editor.batch_ids == []

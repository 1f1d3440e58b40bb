"""Per-request sampling: extreme but valid temperature / top_p values (found by fuzzing /v1) decode."""

import torch

from app.editing.sampling import sample_tokens, top_p_filter
from tests.utils.editing import tiny_lm


def test_top_p_keeps_the_most_likely_token_even_when_top_p_rounds_to_zero():
    logits = torch.tensor([0.1, 2.0, -1.0, 1.5])
    for top_p in (5e-324, 1e-9, 0.3):
        kept = top_p_filter(logits.clone(), top_p)
        assert torch.isfinite(kept).tolist() == [False, True, False, False], top_p
    assert torch.equal(top_p_filter(logits.clone(), 1.0), logits)


def test_a_tiny_temperature_samples_the_greedy_token():
    lm = tiny_lm()
    ids = lm.tokenizer("The capital of France is")["input_ids"]
    greedy = lm.model.generate(
        torch.tensor([ids]), max_new_tokens=4, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id
    )[0, len(ids) :].tolist()
    for temperature, top_p in ((3.129673436107617e-53, 1.0), (1.0, 5e-324)):
        got = list(sample_tokens(lm.model, ids, 4, temperature=temperature, top_p=top_p, seed=0))
        assert got == greedy, (temperature, top_p)

"""Step 1: target vectors, the cached-prefix forward, MPES."""

import pytest
import torch
from torch import nn

from app.editing.fast_forward import FastForward
from app.editing.prompts import target_ids
from app.editing.targets import compute_targets, fact_prompts
from app.editing.types import EditRequest
from tests.utils.editing import FACTS, TEMPLATES, tiny_lm, tiny_settings


@pytest.mark.parametrize("arch,chunk", [("llama", 64), ("gpt2", 64), ("llama", 3)])
def test_cached_prefix_forward_equals_full_forward(arch, chunk, monkeypatch):
    """Running only the suffix against cached prefixes gives the same target log-probs as
    running each prompt whole, including a row whose prefix is empty (subject first), and
    whether the prefixes are computed in one chunk or several of different widths."""
    monkeypatch.setattr("app.editing.fast_forward.PREFIX_CHUNK_ROWS", chunk)
    lm = tiny_lm(arch)
    prompts = [fact_prompts(lm.tokenizer, f, TEMPLATES) for f in FACTS]
    assert any(p.lookup == 0 for fp in prompts for p in fp.rewrite), "want a row with an empty prefix"
    (group,) = FastForward(lm, prompts, edit_layer=2).batches([0, 1, 2])
    with torch.no_grad():
        out = group(torch.zeros(len(FACTS), lm.hidden_size))
    got = out.logp[out.mask]

    expected = []
    kl_expected = []
    for f in group.facts:
        for p in [*prompts[f].rewrite, prompts[f].kl]:
            with torch.no_grad():
                full = torch.log_softmax(lm.model(input_ids=torch.tensor([p.ids])).logits[0], -1)
            first = len(p.ids) - len(p.targets)
            expected += [full[first + k, t] for k, t in enumerate(p.targets)]
            if not p.targets:
                kl_expected.append(full[p.lookup])
    assert torch.allclose(got, torch.stack(expected), atol=1e-4)
    assert torch.allclose(out.kl_logp, torch.stack(kl_expected), atol=1e-4)


def _favour(lm, token_id: int, bias: float):
    """Give the LM head a bias toward one token: it becomes top-1 (or never) everywhere."""
    old = lm.model.get_output_embeddings()
    head = nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[token_id] = bias
    head.requires_grad_(False)
    lm.model.set_output_embeddings(head)


def _single_token_fact(lm):
    fact = EditRequest("The mother tongue of {} is", "Danielle Darrieux", "Paris")
    ids = target_ids(lm.tokenizer, fact.target_new)
    assert len(ids) == 1
    return fact, ids[0]


@pytest.mark.parametrize("margin", [1, 2, 3])
def test_mpes_stops_after_exactly_one_plus_margin_passing_checks(margin):
    lm = tiny_lm()
    fact, tid = _single_token_fact(lm)
    _favour(lm, tid, 100.0)  # top-1 at every check from the very first
    s = tiny_settings(mpes_margin=margin, loss_stop=0.0, max_steps=20)
    tv = compute_targets(lm, [fact], TEMPLATES, s)
    # Checks 1 … 1+margin pass at steps 0 … margin; the stop comes before the update of
    # the last, so exactly `margin` gradient steps were taken.
    assert tv.steps == [margin]


def test_mpes_off_runs_every_step():
    lm = tiny_lm()
    fact, tid = _single_token_fact(lm)
    _favour(lm, tid, 100.0)
    s = tiny_settings(mpes_margin=0, loss_stop=0.0, max_steps=7)
    assert compute_targets(lm, [fact], TEMPLATES, s).steps == [6]


def test_mpes_never_stops_while_target_is_not_top1():
    lm = tiny_lm()
    fact, tid = _single_token_fact(lm)
    _favour(lm, tid, -100.0)
    s = tiny_settings(mpes_margin=1, loss_stop=0.0, max_steps=7)
    assert compute_targets(lm, [fact], TEMPLATES, s).steps == [6]


def test_facts_stop_independently_in_one_batch():
    lm = tiny_lm()
    fact, tid = _single_token_fact(lm)
    other = EditRequest("{} plays", "Michael Jordan", "soccer")
    _favour(lm, tid, 100.0)
    s = tiny_settings(mpes_margin=1, loss_stop=0.0, max_steps=7)
    tv = compute_targets(lm, [fact, other], TEMPLATES, s)
    assert tv.steps == [1, 6]


def test_delta_is_clamped_relative_to_the_hidden_state():
    lm = tiny_lm()
    s = tiny_settings(lr=50.0, clamp_norm_factor=0.3, mpes_margin=0, max_steps=5)
    tv = compute_targets(lm, FACTS, TEMPLATES, s)
    ratio = (tv.z_star - tv.z_init).norm(dim=1) / tv.z_init.norm(dim=1)
    assert (ratio <= 0.3 + 1e-5).all() and (ratio > 0.29).all(), ratio


def test_batched_optimisation_equals_one_fact_at_a_time():
    lm = tiny_lm()
    s = tiny_settings(mpes_margin=0, max_steps=4)
    together = compute_targets(lm, FACTS, TEMPLATES, s)
    alone = torch.cat([compute_targets(lm, [f], TEMPLATES, s).z_star for f in FACTS])
    assert torch.allclose(together.z_star, alone, rtol=1e-4, atol=1e-4)


def test_optimisation_raises_target_probability():
    lm = tiny_lm()
    s = tiny_settings(
        mpes_margin=0, max_steps=15, lr=0.5, clamp_norm_factor=4.0, loss_stop=0.0, delta_penalty=0.0, kl_factor=0.0
    )
    tv = compute_targets(lm, FACTS, TEMPLATES, s)
    (group,) = FastForward(lm, [fact_prompts(lm.tokenizer, f, TEMPLATES) for f in FACTS], s.last_layer).batches(
        [0, 1, 2]
    )

    def nll(delta):
        with torch.no_grad():
            out = group(delta[group.facts])
        return -(out.logp.sum(-1) / out.mask.sum(-1)).mean(-1)

    before, after = nll(torch.zeros_like(tv.z_star)), nll(tv.z_star - tv.z_init)
    assert (after < before - 0.2).all(), (before, after)

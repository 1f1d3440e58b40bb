"""The fast path of step 1 (targets.py + fast_forward.py) against the plain one-fact reference
(reference.py): the same z*, the same number of steps, the same P(target)."""

import pytest
import torch
from torch import nn

from app.editing.prompts import target_ids
from app.editing.reference import compute_target
from app.editing.targets import compute_targets
from app.editing.types import EditRequest
from tests.utils.editing import FACTS, TEMPLATES, tiny_lm, tiny_settings

# A fact whose target the favoured head makes reachable: it stops early (MPES or loss_stop)
# while the others run on, so the fast path also drops facts from its groups.
EASY = EditRequest("The mother tongue of {} is", "Danielle Darrieux", "Paris")
SETTINGS = {
    "mpes": dict(mpes_margin=1, max_steps=15, lr=3.0, clamp_norm_factor=20.0),
    "loss_stop": dict(mpes_margin=0, max_steps=15, lr=3.0, clamp_norm_factor=20.0, loss_stop=2.0),
    "clamped": dict(mpes_margin=0, max_steps=6, lr=5.0, clamp_norm_factor=0.3),
    "no_prefixes": dict(mpes_margin=2, max_steps=10, lr=2.0, clamp_norm_factor=10.0, kl_factor=0.0),
}


def _favour_paris(lm) -> None:
    """A bias toward one token in the LM head, so that a target can become top-1 in a few steps."""
    old = lm.model.get_output_embeddings()
    head = nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[target_ids(lm.tokenizer, "Paris")[0]] = 5.0
    head.requires_grad_(False)
    lm.model.set_output_embeddings(head)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("case", sorted(SETTINGS))
def test_fast_path_matches_the_reference(arch, case):
    lm = tiny_lm(arch)
    _favour_paris(lm)
    s = tiny_settings(**SETTINGS[case])
    templates = ["{}"] if case == "no_prefixes" else TEMPLATES
    facts = [*FACTS, EASY]
    fast = compute_targets(lm, facts, templates, s, max_rows=7)  # small groups: several per step
    ref = [compute_target(lm, f, templates, s) for f in facts]

    assert fast.steps == [r.steps[0] for r in ref]
    if case != "clamped":
        assert min(fast.steps) < s.max_steps - 1, "want a fact that stops early"
    z = torch.cat([r.z_init for r in ref])
    assert ((fast.z_init - z).norm(dim=1) / z.norm(dim=1)).max() < 1e-5
    z_star = torch.cat([r.z_star for r in ref])
    assert ((fast.z_star - z_star).norm(dim=1) / z.norm(dim=1)).max() < 1e-4
    assert fast.prob_before == pytest.approx([r.prob_before[0] for r in ref], rel=1e-4, abs=1e-7)
    assert fast.prob_z_star == pytest.approx([r.prob_z_star[0] for r in ref], rel=1e-4, abs=1e-7)
    if case == "clamped":
        ratio = (fast.z_star - fast.z_init).norm(dim=1) / fast.z_init.norm(dim=1)
        assert torch.allclose(ratio, torch.full_like(ratio, 0.3), atol=1e-5)


@pytest.mark.slow
def test_fast_path_matches_the_reference_on_smollm2(smollm2, shared_data):
    """The first three CounterFact facts with the default preset, on the real model."""
    from app.editing.prompts import generate_context_templates
    from app.editing.settings import preset
    from app.eval.data import load_dataset

    lm = smollm2
    s = preset("smollm2", "encore")
    templates = generate_context_templates(lm, s.n_prefixes, s.prefix_tokens)
    facts = [r.request() for r in load_dataset(shared_data / "counterfact" / "counterfact.json", limit=3).records]
    fast = compute_targets(lm, facts, templates, s)
    ref = [compute_target(lm, f, templates, s) for f in facts]
    z = torch.cat([r.z_init for r in ref])
    z_star = torch.cat([r.z_star for r in ref])
    print(
        "steps",
        fast.steps,
        "relative |Δz*|",
        ((fast.z_star - z_star).norm(dim=1) / z.norm(dim=1)).tolist(),
        "P(target) at z*",
        fast.prob_z_star,
        [r.prob_z_star[0] for r in ref],
    )
    assert fast.steps == [r.steps[0] for r in ref]
    assert min(fast.steps) < s.max_steps - 1, "want a fact stopped by MPES"
    assert ((fast.z_star - z_star).norm(dim=1) / z.norm(dim=1)).max() < 1e-3
    assert fast.prob_before == pytest.approx([r.prob_before[0] for r in ref], rel=1e-3, abs=1e-6)
    assert fast.prob_z_star == pytest.approx([r.prob_z_star[0] for r in ref], rel=1e-3, abs=1e-6)

"""Step 1 of ENCORE: a target hidden state z* = z + δ per fact, with MPES (docs/method.md §2).

For every fact a free vector δ is added to the residual stream at the output of the last
edited layer, at the subject's last token, in every prompt of that fact: the bare prompt,
the same prompt after each generated prefix ("The …. {prompt}"), and the KL prompt
"{subject} is a". δ minimises, per fact,

    NLL(target_new | prompts)  +  kl_factor · KL(p_now ‖ p_unedited)('{subject} is a')
                                +  delta_penalty · ‖δ‖ / ‖z‖²

with Adam and a hard clamp ‖δ‖ ≤ clamp_norm_factor · ‖z‖ after every step.
Most-Probable Early Stopping: before each step, check whether target_new is the top-1
token at every target position of every prefixed prompt; count the checks that pass and
stop once the count reaches 1 + margin.

This is memit's compute_z for all the facts of a batch at once. Facts share nothing: each
loss sees only its own δ, and each δ is its own parameter of the optimiser, so batching
changes no fact's result, it only makes the forward passes large. How those passes are made
cheap is fast_forward.py's business; reference.py is the same method for one fact with a
plain forward pass, and the tests hold this one to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.editing.fast_forward import FactPrompts, FastForward, Prompt
from app.editing.model import LoadedModel
from app.editing.prompts import encode_with_subject, fill, target_ids
from app.editing.settings import EditSettings
from app.editing.types import EditRequest

KL_TEMPLATE = "{} is a"


@dataclass
class TargetVectors:
    z_star: torch.Tensor  # (B, d)
    z_init: torch.Tensor  # (B, d) the unedited hidden state at the subject's last token
    steps: list[int]  # gradient steps taken per fact
    prob_before: list[float]  # P(target_new | bare prompt) at δ = 0, geometric mean over target tokens
    prob_z_star: list[float]  # the same at z*


def fact_prompts(tok, request: EditRequest, templates: list[str]) -> FactPrompts:
    """One rewrite prompt per context template (the first is the bare '{}'), then the KL prompt."""
    target = target_ids(tok, request.target_new)
    rewrite = []
    for template in templates:
        enc = encode_with_subject(tok, fill(template, request.prompt), request.subject)
        rewrite.append(Prompt(enc.ids + target[:-1], enc.lookup, target))
    enc = encode_with_subject(tok, KL_TEMPLATE, request.subject)
    # The KL term reads the subject's last token only; later tokens cannot change it.
    return FactPrompts(rewrite, Prompt(enc.ids[: enc.lookup + 1], enc.lookup))


def compute_targets(
    lm: LoadedModel,
    requests: list[EditRequest],
    templates: list[str],
    settings: EditSettings,
    max_rows: int = 384,
    check_bare: bool = False,
) -> TargetVectors:
    """Optimise δ for every fact of a batch at once; see the module docstring. `check_bare`: MPES
    counts a check only when the bare prompt's target is top-1 too (an edit made again because
    the written weights did not answer the bare prompt with it)."""
    n = len(requests)
    ff = FastForward(lm, [fact_prompts(lm.tokenizer, r, templates) for r in requests], settings.last_layer, max_rows)
    z = ff.z  # (n, d)
    max_norm = settings.clamp_norm_factor * z.norm(dim=-1)
    delta = [torch.zeros_like(z[f], requires_grad=True) for f in range(n)]
    opt = torch.optim.Adam(delta, lr=settings.lr)

    kl_init: dict[int, torch.Tensor] = {}
    prob_before, prob_z_star = [0.0] * n, [0.0] * n
    steps, passes = [0] * n, [0] * n
    running = list(range(n))
    for step in range(settings.max_steps):
        stopped = set()
        for batch in ff.batches(running):  # at most max_rows prompts per forward pass
            facts = batch.facts
            d = torch.stack([delta[f] for f in facts])
            out = batch(d)

            # NLL of the target per prompt (mean over its tokens; logp is 0 past a target's end),
            # then the mean over the fact's prompts.
            nll_each = -out.logp.sum(-1) / out.mask.sum(-1)  # (b, prompts)
            nll = nll_each.mean(-1)
            if step == 0:
                kl_init.update({f: out.kl_logp[i].detach() for i, f in enumerate(facts)})
            kl_0 = torch.stack([kl_init[f] for f in facts])
            kl = (out.kl_logp.exp() * (out.kl_logp - kl_0)).sum(-1)
            penalty = d.norm(dim=-1) / z[facts].norm(dim=-1) ** 2
            loss = nll + settings.kl_factor * kl + settings.delta_penalty * penalty

            # MPES: the target is top-1 at every target position of every prefixed prompt
            # (of the bare prompt too when there are no prefixes, or when asked to).
            checked = out.top1 | ~out.mask
            if out.mask.shape[1] > 1 and not check_bare:
                checked = checked[:, 1:]
            top1_everywhere = checked.flatten(1).all(-1).tolist()
            p_bare = torch.exp(-nll_each[:, 0].detach()).tolist()
            for i, f in enumerate(facts):
                passes[f] += int(top1_everywhere[i])
                steps[f] = step
                prob_z_star[f] = p_bare[i]
                if step == 0:
                    prob_before[f] = p_bare[i]
                if (
                    (settings.mpes_margin > 0 and passes[f] >= 1 + settings.mpes_margin)
                    or float(loss[i].detach()) < settings.loss_stop
                    or step == settings.max_steps - 1
                ):
                    stopped.add(f)
            go = [f not in stopped for f in facts]
            if any(go):
                loss[go].sum().backward()
            for f in stopped.intersection(facts):
                delta[f].grad = None  # its δ is final: Adam leaves a parameter without a gradient alone

        running = [f for f in running if f not in stopped]
        if not running:
            break
        opt.step()
        opt.zero_grad()
        with torch.no_grad():  # the clamp: back onto the sphere ‖δ‖ = c·‖z‖ when outside it
            for f in running:
                delta[f].mul_((max_norm[f] / delta[f].norm()).clamp(max=1.0))

    z_star = z + torch.stack(delta).detach()
    return TargetVectors(z_star=z_star, z_init=z, steps=steps, prob_before=prob_before, prob_z_star=prob_z_star)

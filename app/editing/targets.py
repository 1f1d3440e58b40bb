"""Step 1 of ENCORE: a target hidden state z* = z + δ per fact, with MPES.

For every fact a free vector δ is added to the residual stream at the output of the
last edited block, at the subject's last token, in every prompt of that fact:
the bare prompt, the same prompt after each generated prefix ("The …. {prompt}"),
and the KL prompt "{subject} is a". δ minimises, per fact,

    NLL(target_new | prompts)  +  kl_factor · KL(p_now || p_unedited)('{subject} is a')
                                +  delta_penalty · ‖δ‖ / ‖z‖²

with Adam and a hard clamp ‖δ‖ ≤ clamp_norm_factor · ‖z‖ after every step.
Most-Probable Early Stopping: before each step, check whether target_new is the
top-1 token at every target position of every prefixed prompt; count the checks
that pass and stop once the count reaches 1 + margin.

Where the time goes, and what this module does about it:
- Facts are independent (each loss only sees its own δ), so all facts of a batch are
  optimised together in a few large forward passes instead of one small one each.
  Adam is elementwise, so a shared optimiser over the stacked δ is exactly one
  optimiser per fact.
- Tokens before the subject's last token never see δ (causal attention): they are
  run once and cached as keys and values. Blocks up to the edit layer never see δ
  either: the suffix (subject's last token onwards) is run through them once. Each
  step runs only the suffix through the blocks above the edit layer.
- The vocabulary projection is computed only where a target token is predicted
  and at the KL position, not at every position.
- A fact that has stopped leaves the batch.
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
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass
class TargetVectors:
    z_star: torch.Tensor  # (B, d)
    z_init: torch.Tensor  # (B, d) the unedited hidden state at the subject's last token
    steps: list[int]  # gradient steps taken per fact
    prob_before: list[float]  # P(target_new | bare prompt), geometric mean over target tokens


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
) -> TargetVectors:
    """Optimise δ for every fact of a batch at once; see the module docstring."""
    n = len(requests)
    d = lm.hidden_size
    dev = lm.device
    ff = FastForward(lm, [fact_prompts(lm.tokenizer, r, templates) for r in requests], settings.last_layer, max_rows)

    delta = torch.zeros(n, d, device=dev)
    adam_m = torch.zeros_like(delta)
    adam_v = torch.zeros_like(delta)
    z_init = ff.z
    kl_init: dict[int, torch.Tensor] = {}
    prob_before = [0.0] * n
    steps = [0] * n
    passes = [0] * n
    active = list(range(n))

    b1, b2 = ADAM_BETAS
    done: set[int] = set()
    for step in range(settings.max_steps):
        grad = torch.zeros_like(delta)
        for g in ff.batches(active):
            idx = torch.tensor(g.facts, device=dev)
            local = delta[idx].clone().requires_grad_(True)
            out = g(local)
            per_prompt = out.logp.sum(-1) / out.mask.sum(-1)
            nll = -sum(per_prompt.unbind(-1)) / per_prompt.shape[1]
            checked = (out.top1 | ~out.mask)[:, 1:] if out.mask.shape[1] > 1 else (out.top1 | ~out.mask)
            all_top1 = checked.flatten(1).all(-1)
            kl_logp = out.kl_logp
            if step == 0:
                bare = sum((out.logp[:, 0] / out.mask[:, 0].sum(-1, keepdim=True)).unbind(-1))
                for i, f in enumerate(g.facts):
                    kl_init[f] = kl_logp[i].detach()
                    prob_before[f] = float(torch.exp(bare[i].detach()))
            init = torch.stack([kl_init[f] for f in g.facts])
            kl = (kl_logp.exp() * (kl_logp - init)).sum(-1)
            z_norm = z_init[idx].norm(dim=-1)
            penalty = local.norm(dim=-1) / z_norm**2
            loss = nll + settings.kl_factor * kl + settings.delta_penalty * penalty

            keep = torch.ones(len(g.facts), dtype=torch.bool)
            for i, f in enumerate(g.facts):
                passes[f] += int(all_top1[i])
                steps[f] = step
                mpes_done = settings.mpes_margin > 0 and passes[f] >= 1 + settings.mpes_margin
                if mpes_done or float(loss[i].detach()) < settings.loss_stop or step == settings.max_steps - 1:
                    done.add(f)
                    keep[i] = False
            if keep.any():
                loss[keep.to(dev)].sum().backward()
                grad[idx] = local.grad

        active = [f for f in active if f not in done]
        if not active:
            break
        # Adam on the facts still going (bias correction is shared: they all started together).
        a = torch.tensor(active, device=dev)
        t = step + 1
        adam_m[a] = b1 * adam_m[a] + (1 - b1) * grad[a]
        adam_v[a] = b2 * adam_v[a] + (1 - b2) * grad[a] ** 2
        update = (adam_m[a] / (1 - b1**t)) / ((adam_v[a] / (1 - b2**t)).sqrt() + ADAM_EPS)
        new = delta[a] - settings.lr * update
        max_norm = settings.clamp_norm_factor * z_init[a].norm(dim=-1, keepdim=True)
        norm = new.norm(dim=-1, keepdim=True)
        delta[a] = torch.where(norm > max_norm, new * max_norm / norm, new)

    return TargetVectors(z_star=z_init + delta, z_init=z_init, steps=steps, prob_before=prob_before)

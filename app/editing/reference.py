"""Step 1 for one fact, written plainly: the reference the fast path is tested against (docs/method.md §2).

The same method as targets.compute_targets, in the shape of memit's compute_z: one fact, all
its prompts in one padded batch, the whole model run on them at every step, a forward hook
adding δ to the output of the last edited layer at the subject's last token, the vocabulary
projection at every position. Nothing is cached, so it is slow; every line can be checked
against the method by eye. kedit never calls it: the tests compare it with the fast path
(z*, steps, P(target)) on tiny models and on SmolLM2.
"""

from __future__ import annotations

import torch

from app.editing.batching import hidden_of, pad_right
from app.editing.model import LoadedModel
from app.editing.settings import EditSettings
from app.editing.targets import TargetVectors, fact_prompts
from app.editing.types import EditRequest


def compute_target(
    lm: LoadedModel, request: EditRequest, templates: list[str], settings: EditSettings
) -> TargetVectors:
    """z* for one fact (a TargetVectors of one row)."""
    fp = fact_prompts(lm.tokenizer, request, templates)
    prompts = [*fp.rewrite, fp.kl]
    ids, mask = pad_right([p.ids for p in prompts], lm.tokenizer.pad_token_id)
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    rows = torch.arange(len(prompts), device=lm.device)
    lookups = torch.tensor([p.lookup for p in prompts], device=lm.device)

    delta = torch.zeros(lm.hidden_size, device=lm.device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=settings.lr)
    z = None

    def add_delta(module, args, output):
        nonlocal z
        h = hidden_of(output)
        if z is None:
            z = h[0, fp.rewrite[0].lookup].detach().float()
        at_subject = torch.zeros_like(h)
        at_subject[rows, lookups] = delta.to(h.dtype)
        return (h + at_subject, *output[1:]) if isinstance(output, tuple) else h + at_subject

    hook = lm.adapter.block(lm.model, settings.last_layer).register_forward_hook(add_delta)
    kl_init = None
    passes = 0
    try:
        for step in range(settings.max_steps):
            logp = torch.log_softmax(lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
            assert z is not None  # add_delta set it in this forward pass

            nll_each = []  # per rewrite prompt: mean NLL over the target tokens
            top1 = []  # per rewrite prompt: the target is the argmax at each of its positions
            for r, p in enumerate(fp.rewrite):
                positions = torch.arange(len(p.targets), device=lm.device) + len(p.ids) - len(p.targets)
                targets = torch.tensor(p.targets, device=lm.device)
                nll_each.append(-logp[r, positions, targets].mean())
                top1.append(bool((logp[r, positions].argmax(-1) == targets).all()))
            nll = torch.stack(nll_each).mean()

            kl_logp = logp[len(prompts) - 1, fp.kl.lookup]
            if kl_init is None:
                kl_init = kl_logp.detach()
                prob_before = float(torch.exp(-nll_each[0].detach()))
            kl = (kl_logp.exp() * (kl_logp - kl_init)).sum()
            loss = nll + settings.kl_factor * kl + settings.delta_penalty * delta.norm() / z.norm() ** 2

            # MPES: top-1 in every prefixed prompt (in the bare prompt when there are none).
            passes += int(all(top1[1:] if len(top1) > 1 else top1))
            if (
                (settings.mpes_margin > 0 and passes >= 1 + settings.mpes_margin)
                or float(loss.detach()) < settings.loss_stop
                or step == settings.max_steps - 1
            ):
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                max_norm = settings.clamp_norm_factor * z.norm()
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    finally:
        hook.remove()
    assert z is not None
    return TargetVectors(
        z_star=(z + delta.detach())[None],
        z_init=z[None],
        steps=[step],
        prob_before=[prob_before],
        prob_z_star=[float(torch.exp(-nll_each[0].detach()))],
    )

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
import torch.nn.functional as F

from app.editing.keys import _StopForward
from app.editing.model import LoadedModel
from app.editing.prompts import encode_with_subject, fill, target_ids
from app.editing.settings import EditSettings
from app.editing.types import EditRequest

KL_TEMPLATE = "{} is a"
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
PREFIX_CHUNK_ROWS = 64  # rows per forward in the one-time prefix pass


@dataclass
class TargetVectors:
    z_star: torch.Tensor  # (B, d)
    z_init: torch.Tensor  # (B, d) the unedited hidden state at the subject's last token
    steps: list[int]  # gradient steps taken per fact
    prob_before: list[float]  # P(target_new | bare prompt), geometric mean over target tokens


@dataclass
class _Row:
    fact: int
    kind: str  # "bare" | "prefixed" | "kl"
    ids: list[int]
    lookup: int
    targets: list[int]  # target token ids (rewrite rows)
    first_target_pos: int  # position whose logits predict targets[0]


def build_rows(lm: LoadedModel, requests: list[EditRequest], templates: list[str]) -> list[list[_Row]]:
    """Per fact: one rewrite row per context template (the first is the bare '{}'), then the KL row."""
    tok = lm.tokenizer
    per_fact = []
    for f, req in enumerate(requests):
        tgt = target_ids(tok, req.target_new)
        rows = []
        for t, template in enumerate(templates):
            enc = encode_with_subject(tok, fill(template, req.prompt), req.subject)
            rows.append(_Row(f, "bare" if t == 0 else "prefixed", enc.ids + tgt[:-1], enc.lookup, tgt, len(enc.ids) - 1))
        enc = encode_with_subject(tok, KL_TEMPLATE, req.subject)
        # The KL term reads the subject's last token only; later tokens cannot change it.
        rows.append(_Row(f, "kl", enc.ids[: enc.lookup + 1], enc.lookup, [], -1))
        per_fact.append(rows)
    return per_fact


class _Group:
    """A set of facts run together: their prefixes cached once, their suffixes run every step.

    Rows are split at the subject's last token: prefix = ids[:lookup] (left-padded, so
    every prefix ends at the same column), suffix = ids[lookup:] (right-padded, so δ
    always goes to column 0 of the suffix).
    """

    def __init__(
        self,
        lm: LoadedModel,
        facts: list[int],
        rows_by_fact: list[list[_Row]],
        edit_layer: int,
        prefix_cache: tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    ):
        self.lm = lm
        self.facts = facts
        self.rows_by_fact = rows_by_fact
        self.edit_layer = edit_layer
        local = {f: i for i, f in enumerate(facts)}
        rows = [r for f in facts for r in rows_by_fact[f]]
        dev = lm.device
        pad = lm.tokenizer.pad_token_id
        n = len(rows)
        p_len = prefix_cache[0] if prefix_cache else max(r.lookup for r in rows)
        s_len = max(len(r.ids) - r.lookup for r in rows)

        prefix_ids = torch.full((n, p_len), pad, dtype=torch.long)
        prefix_mask = torch.zeros((n, p_len), dtype=torch.long)
        suffix_ids = torch.full((n, s_len), pad, dtype=torch.long)
        suffix_mask = torch.zeros((n, s_len), dtype=torch.long)
        suffix_pos = torch.zeros((n, s_len), dtype=torch.long)
        for i, r in enumerate(rows):
            pre, suf = r.ids[: r.lookup], r.ids[r.lookup :]
            if pre:
                prefix_ids[i, p_len - len(pre) :] = torch.tensor(pre)
                prefix_mask[i, p_len - len(pre) :] = 1
            suffix_ids[i, : len(suf)] = torch.tensor(suf)
            suffix_mask[i, : len(suf)] = 1
            suffix_pos[i] = torch.arange(len(pre), len(pre) + s_len)
        self.row_fact = torch.tensor([local[r.fact] for r in rows], device=dev)
        self.suffix_ids = suffix_ids.to(dev)
        self.mask = torch.cat([prefix_mask, suffix_mask], dim=1).to(dev)
        self.suffix_pos = suffix_pos.to(dev)
        self.bare_rows = torch.tensor([i for i, r in enumerate(rows) if r.kind == "bare"], device=dev)
        self.kl_rows = torch.tensor([i for i, r in enumerate(rows) if r.kind == "kl"], device=dev)

        # Every (row, column) whose logits predict a target token, with the facts they belong to.
        g_row, g_col, g_tok, g_fact, g_check, g_bare = [], [], [], [], [], []
        has_prefixed = any(r.kind == "prefixed" for r in rows)
        for i, r in enumerate(rows):
            for k, t in enumerate(r.targets):
                g_row.append(i)
                g_col.append(r.first_target_pos + k - r.lookup)
                g_tok.append(t)
                g_fact.append(local[r.fact])
                # MPES checks the prefixed prompts; with no prefixes, the bare prompt.
                g_check.append(r.kind == "prefixed" or not has_prefixed)
                g_bare.append(r.kind == "bare")
        as_t = lambda xs, dt=torch.long: torch.tensor(xs, dtype=dt, device=dev)  # noqa: E731
        self.g_row, self.g_col, self.g_tok, self.g_fact = as_t(g_row), as_t(g_col), as_t(g_tok), as_t(g_fact)
        self.g_check, self.g_bare = as_t(g_check, torch.bool), as_t(g_bare, torch.bool)
        # Per-row target counts, to turn summed log-probs into per-token means.
        self.n_rewrite = torch.zeros(len(facts), device=dev).index_add_(
            0, self.row_fact, torch.tensor([1.0 if r.kind != "kl" else 0.0 for r in rows], device=dev)
        )
        self.tokens_per_row = torch.tensor([max(1, len(r.targets)) for r in rows], dtype=torch.float, device=dev)

        self.p_len = p_len
        self.cache = None
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        if prefix_cache is not None:
            self.kv = prefix_cache[1]
        elif p_len > 0:
            self.kv, self.cache = self._prefix_pass([r.ids[: r.lookup] for r in rows], p_len)
        if prefix_cache is None:
            self._run_to_edit_layer()

    def _prefix_pass(self, prefixes: list[list[int]], p_len: int):
        """Keys and values of every row's prefix, left-padded to p_len with zeros.

        Rows run in chunks of similar prefix length (little padding computed); masked
        positions get zero keys and values, which attention never reads.
        """
        lm, dev = self.lm, self.lm.device
        pad = lm.tokenizer.pad_token_id
        order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
        parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        rows_done: list[int] = []
        cache = None
        for start in range(0, len(order), PREFIX_CHUNK_ROWS):
            idx = order[start : start + PREFIX_CHUNK_ROWS]
            width = max(1, max(len(prefixes[i]) for i in idx))
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for j, i in enumerate(idx):
                if prefixes[i]:
                    ids[j, width - len(prefixes[i]) :] = torch.tensor(prefixes[i])
                    mask[j, width - len(prefixes[i]) :] = 1
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            with torch.no_grad():
                out = lm.model.base_model(
                    input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), use_cache=True
                )
            cache = out.past_key_values
            keep = mask.to(dev)[:, None, :, None].bool()  # rows that are all padding stay zero
            parts.append([
                (F.pad(torch.where(keep, l.keys, 0.0), (0, 0, p_len - width, 0)),
                 F.pad(torch.where(keep, l.values, 0.0), (0, 0, p_len - width, 0)))
                for l in cache.layers
            ])
            rows_done.extend(idx)
        back = torch.empty(len(rows_done), dtype=torch.long)
        back[torch.tensor(rows_done)] = torch.arange(len(rows_done))
        back = back.to(dev)
        kv = [
            (torch.cat([p[layer][0] for p in parts])[back], torch.cat([p[layer][1] for p in parts])[back])
            for layer in range(len(parts[0]))
        ]
        return kv, cache

    def _load_prefix(self) -> None:
        """The cache object is shared and grows during a forward: load this group's prefix into it."""
        if self.cache is not None:
            for layer, (k, v) in zip(self.cache.layers, self.kv):
                layer.keys, layer.values = k, v

    def _run_to_edit_layer(self) -> None:
        """Run the suffixes up to the edit layer once: δ only changes what happens above it.

        Keeps that layer's output (the unedited z at column 0) and the arguments the model
        passes to the next block (attention mask, position embeddings, cache), so each step
        can call the upper blocks directly.
        """
        lm = self.lm
        captured: dict = {}

        def keep_output(module, args, output):
            captured["h"] = (output[0] if isinstance(output, tuple) else output).detach()
            if self.edit_layer + 1 == lm.num_layers:
                raise _StopForward

        def keep_inputs(module, args, kwargs):
            captured["args"], captured["kwargs"] = args[1:], kwargs
            raise _StopForward

        hooks = [lm.adapter.block(lm.model, self.edit_layer).register_forward_hook(keep_output)]
        if self.edit_layer + 1 < lm.num_layers:
            hooks.append(lm.adapter.block(lm.model, self.edit_layer + 1).register_forward_pre_hook(keep_inputs, with_kwargs=True))
        self._load_prefix()
        try:
            with torch.no_grad():
                lm.model.base_model(
                    input_ids=self.suffix_ids,
                    attention_mask=self.mask,
                    position_ids=self.suffix_pos,
                    past_key_values=self.cache if self.kv else None,
                    use_cache=bool(self.kv),
                )
        except _StopForward:
            pass
        finally:
            for h in hooks:
                h.remove()
        self.h_edit = captured["h"]
        self.upper_args = captured.get("args", ())
        self.upper_kwargs = captured.get("kwargs", {})

    def subset(self, keep: list[int], cache) -> "_Group":
        """The same group without the facts that stopped; their cached prefixes are dropped, not recomputed."""
        keep_set = set(keep)
        rows_idx, i = [], 0
        for f in self.facts:
            n = len(self.rows_by_fact[f])
            if f in keep_set:
                rows_idx.extend(range(i, i + n))
            i += n
        idx = torch.tensor(rows_idx, device=self.lm.device)
        kv = [(k[idx], v[idx]) for k, v in self.kv]
        group = _Group(self.lm, [f for f in self.facts if f in keep_set], self.rows_by_fact, self.edit_layer,
                       prefix_cache=(self.p_len, kv) if self.kv else None)
        group.cache = cache
        # The suffix width may shrink with the rows; recompute the cheap part rather than slice masks.
        group._run_to_edit_layer()
        return group

    def forward(self, delta: torch.Tensor, z_init_out: list | None = None):
        """Add δ at the subject's last token after the edit layer, run the blocks above it, and
        return target log-probs and the KL prompts' log-probs."""
        lm = self.lm
        if z_init_out is not None:
            z_init_out.append(self.h_edit[self.bare_rows, 0].float())
        at_subject = torch.zeros_like(self.h_edit)
        at_subject[:, 0] = delta[self.row_fact]
        h = self.h_edit + at_subject
        self._load_prefix()
        for layer in range(self.edit_layer + 1, lm.num_layers):
            out = lm.adapter.block(lm.model, layer)(h, *self.upper_args, **self.upper_kwargs)
            h = out[0] if isinstance(out, tuple) else out
        hidden = lm.adapter.norm(lm.model)(h)
        head = lm.model.get_output_embeddings()
        # Losses in float32 whatever the model's dtype (bf16 logits lose the small differences).
        target_logits = head(hidden[self.g_row, self.g_col]).float()
        kl_logits = head(hidden[self.kl_rows, 0]).float()
        return target_logits, F.log_softmax(kl_logits, dim=-1)

    def losses(self, target_logits: torch.Tensor):
        """Per fact: mean per-token NLL over its rewrite prompts, the bare prompt's NLL, and the MPES check."""
        n_facts = len(self.facts)
        logp = F.log_softmax(target_logits, dim=-1).gather(1, self.g_tok[:, None]).squeeze(1)
        per_row = torch.zeros(len(self.row_fact), device=logp.device).index_add(0, self.g_row, logp)
        per_row = per_row / self.tokens_per_row
        nll = -torch.zeros(n_facts, device=logp.device).index_add(0, self.row_fact, per_row) / self.n_rewrite
        bare = torch.zeros(n_facts, device=logp.device).index_add(
            0, self.g_fact[self.g_bare], logp[self.g_bare] / self.tokens_per_row[self.g_row[self.g_bare]]
        )
        top1 = (target_logits.argmax(-1) == self.g_tok) | ~self.g_check
        # In int: CUDA has no bool scatter_reduce.
        all_top1 = torch.ones(n_facts, dtype=torch.int32, device=logp.device).scatter_reduce(
            0, self.g_fact, top1.int(), reduce="amin"
        ).bool()
        return nll, -bare, all_top1


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
    rows_by_fact = build_rows(lm, requests, templates)
    edit_layer = settings.last_layer

    delta = torch.zeros(n, d, device=dev)
    adam_m = torch.zeros_like(delta)
    adam_v = torch.zeros_like(delta)
    z_init = torch.zeros(n, d, device=dev)
    kl_init: dict[int, torch.Tensor] = {}
    prob_before = [0.0] * n
    steps = [0] * n
    passes = [0] * n
    active = list(range(n))

    def suffix_len(f: int) -> int:
        return max(len(r.ids) - r.lookup for r in rows_by_fact[f])

    def make_groups(facts: list[int]) -> list[_Group]:
        # Facts with similar suffix lengths share a group: less padding in every step.
        groups, chunk, rows = [], [], 0
        for f in sorted(facts, key=suffix_len):
            if chunk and rows + len(rows_by_fact[f]) > max_rows:
                groups.append(_Group(lm, chunk, rows_by_fact, edit_layer))
                chunk, rows = [], 0
            chunk.append(f)
            rows += len(rows_by_fact[f])
        if chunk:
            groups.append(_Group(lm, chunk, rows_by_fact, edit_layer))
        return groups

    groups = make_groups(active)
    b1, b2 = ADAM_BETAS
    done: set[int] = set()
    for step in range(settings.max_steps):
        grad = torch.zeros_like(delta)
        for g in groups:
            idx = torch.tensor(g.facts, device=dev)
            local = delta[idx].clone().requires_grad_(True)
            captured: list[torch.Tensor] | None = [] if step == 0 else None
            target_logits, kl_logp = g.forward(local, captured)
            nll, nll_bare, all_top1 = g.losses(target_logits)
            if step == 0:
                z_init[idx] = captured[0]
                for i, f in enumerate(g.facts):
                    kl_init[f] = kl_logp[i].detach()
                    prob_before[f] = float(torch.exp(-nll_bare[i].detach()))
            init = torch.stack([kl_init[f] for f in g.facts])
            kl = (kl_logp.exp() * (kl_logp - init)).sum(-1)
            z_norm = z_init[idx].norm(dim=-1)
            penalty = local.norm(dim=-1) / z_norm**2
            loss = nll + settings.kl_factor * kl + settings.delta_penalty * penalty

            keep = torch.ones(len(g.facts), dtype=torch.bool)
            for i, f in enumerate(g.facts):
                if f in done:  # still in a group that has not been rebuilt yet
                    keep[i] = False
                    continue
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

        groups = [
            g if not any(f in done for f in g.facts) else g.subset([f for f in g.facts if f not in done], g.cache)
            for g in groups
            if any(f not in done for f in g.facts)
        ]

    return TargetVectors(z_star=z_init + delta, z_init=z_init, steps=steps, prob_before=prob_before)

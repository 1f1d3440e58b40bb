"""The forward pass of the target-vector step, for many facts at once (docs/method.md §2).

What targets.compute_targets needs at every step: for each fact's prompts, with δ added to the
output of the edit layer at the subject's last token, the log-probability of every target token
(teacher-forced) and whether it is the top-1 token, and the next-token distribution of the KL
prompt at the subject. `FastForward` gives exactly that and nothing more; reference.py computes
the same with one plain forward pass per step, and the tests hold the two together.

Where the time goes, and what is done about it:
- Tokens before the subject's last token never see δ (causal attention): their keys and values
  are computed once (the prefix pass) and given to every later pass as a KV cache.
- Blocks up to the edit layer never see δ either: the rest of each prompt (the suffix, from the
  subject's last token on) is run through them once. Each step runs only the suffix through the
  blocks above the edit layer, called directly with the arguments the model gave them.
- The vocabulary projection is computed only where a target token is predicted and at the KL
  position, not at every position.
- Facts run in groups of at most `max_rows` prompts, of similar suffix length (little padding);
  a fact that has stopped leaves its group.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import Cache, DynamicCache

from app.editing.batching import chunks_by_length, forward_until, hidden_of, pad_left, pad_right
from app.editing.model import LoadedModel

PREFIX_CHUNK_ROWS = 64  # rows per forward in the one-time prefix pass


@dataclass(frozen=True)
class Prompt:
    """One prompt of a fact, as token ids."""

    ids: list[int]
    lookup: int  # the subject's last token: where δ is added
    # Target tokens, teacher-forced: `ids` ends with targets[:-1], so the logits at position
    # len(ids) - len(targets) + k predict targets[k]. Empty for the KL prompt.
    targets: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class FactPrompts:
    rewrite: list[Prompt]  # the bare prompt first, then the same prompt after each generated prefix
    kl: Prompt  # '{subject} is a', read at the subject's last token


@dataclass
class Output:
    """What one forward pass gives for a group of b facts with R rewrite prompts and ≤ T target tokens."""

    facts: list[int]
    logp: torch.Tensor  # (b, R, T) log P(target token k | rewrite prompt r); 0 where mask is False
    top1: torch.Tensor  # (b, R, T) whether that target token is the most probable one
    mask: torch.Tensor  # (b, R, T) True where the fact's target has a k-th token
    kl_logp: torch.Tensor  # (b, V) log-probabilities of the next token of the KL prompt


class FastForward:
    """δ added at the subject's last token of every prompt of many facts; see the module docstring.

    `z` (n×d) is the unedited output of the edit layer at the subject's last token of each fact's
    bare prompt. `batches(facts)` gives the groups that hold those facts; calling a group with its
    facts' δ (b×d) runs the forward pass and returns an `Output`.
    """

    def __init__(self, lm: LoadedModel, prompts: list[FactPrompts], edit_layer: int, max_rows: int = 384):
        self.lm = lm
        self.prompts = prompts
        self.edit_layer = edit_layer
        # Facts with similar suffix lengths share a group: less padding in every step.
        suffix = [max(len(p.ids) - p.lookup for p in _rows(fp)) for fp in prompts]
        order = sorted(range(len(prompts)), key=lambda f: suffix[f])
        self.groups: list[_Group] = []
        chunk: list[int] = []
        rows = 0
        for f in order:
            if chunk and rows + len(_rows(prompts[f])) > max_rows:
                self.groups.append(_Group(lm, chunk, prompts, edit_layer))
                chunk, rows = [], 0
            chunk.append(f)
            rows += len(_rows(prompts[f]))
        if chunk:
            self.groups.append(_Group(lm, chunk, prompts, edit_layer))
        self.z = torch.zeros(len(prompts), lm.hidden_size, device=lm.device)
        for g in self.groups:
            self.z[torch.tensor(g.facts, device=lm.device)] = g.h_edit[g.bare_rows, 0].float()

    def batches(self, facts: list[int]) -> list[_Group]:
        """The groups holding `facts`, each cut down to those of its facts that are in `facts`."""
        keep = set(facts)
        self.groups = [
            g if all(f in keep for f in g.facts) else g.subset([f for f in g.facts if f in keep])
            for g in self.groups
            if any(f in keep for f in g.facts)
        ]
        return self.groups


def _rows(fp: FactPrompts) -> list[Prompt]:
    return [*fp.rewrite, fp.kl]


def _cache_keyword(model) -> str:
    """The name under which this transformers version takes a KV cache: `cache` since it renamed
    `past_key_values` (deprecated in 5.2x, removed in 5.40); `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _with_cache(args: tuple, kwargs: dict, cache: Cache | None) -> tuple[tuple, dict]:
    """A block's captured arguments with its KV cache (passed by keyword or by position) replaced."""
    args = tuple(cache if isinstance(a, Cache) else a for a in args)
    kwargs = {k: cache if isinstance(v, Cache) else v for k, v in kwargs.items()}
    return args, kwargs


class _Group:
    """A set of facts run together: their prefixes cached once, their suffixes run every step.

    Rows (every prompt of every fact, fact by fact) are split at the subject's last token:
    prefix = ids[:lookup], left-padded so that every prefix ends at the same column; suffix =
    ids[lookup:], right-padded so that δ always goes to column 0 of the suffix.
    """

    def __init__(
        self,
        lm: LoadedModel,
        facts: list[int],
        prompts: list[FactPrompts],
        edit_layer: int,
        prefix_kv: tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    ):
        self.lm = lm
        self.facts = facts
        self.prompts = prompts
        self.edit_layer = edit_layer
        dev = lm.device
        rows = [p for f in facts for p in _rows(prompts[f])]
        self.rows_per_fact = len(_rows(prompts[facts[0]]))
        n_rewrite = self.rows_per_fact - 1
        self.p_len = prefix_kv[0] if prefix_kv else max(p.lookup for p in rows)
        s_len = max(len(p.ids) - p.lookup for p in rows)

        _, prefix_mask = pad_left([p.ids[: p.lookup] for p in rows], lm.tokenizer.pad_token_id, self.p_len)
        suffix_ids, suffix_mask = pad_right([p.ids[p.lookup :] for p in rows], lm.tokenizer.pad_token_id, s_len)
        self.suffix_ids = suffix_ids.to(dev)
        self.mask = torch.cat([prefix_mask, suffix_mask], dim=1).to(dev)
        self.suffix_pos = (torch.tensor([p.lookup for p in rows])[:, None] + torch.arange(s_len)).to(dev)
        self.row_fact = torch.arange(len(facts), device=dev).repeat_interleave(self.rows_per_fact)
        self.bare_rows = torch.arange(0, len(rows), self.rows_per_fact, device=dev)
        self.kl_rows = self.bare_rows + n_rewrite

        # Every (row, column) whose logits predict a target token, and where its log-probability
        # goes in the (fact, prompt, token) layout of Output.
        self.n_tokens = max(len(p.targets) for p in rows)
        at_row, at_col, tok, out_fact, out_prompt, out_k = [], [], [], [], [], []
        for i, p in enumerate(rows):
            first = len(p.ids) - len(p.targets)
            for k, t in enumerate(p.targets):
                at_row.append(i)
                at_col.append(first + k - p.lookup)
                tok.append(t)
                out_fact.append(i // self.rows_per_fact)
                out_prompt.append(i % self.rows_per_fact)
                out_k.append(k)
        as_t = lambda xs: torch.tensor(xs, dtype=torch.long, device=dev)  # noqa: E731
        self.at_row, self.at_col, self.tok = as_t(at_row), as_t(at_col), as_t(tok)
        self.out_index = (as_t(out_fact), as_t(out_prompt), as_t(out_k))
        self.out_shape = (len(facts), n_rewrite, self.n_tokens)
        self.out_mask = torch.zeros(self.out_shape, dtype=torch.bool, device=dev).index_put(
            self.out_index, torch.ones(len(tok), dtype=torch.bool, device=dev)
        )

        if prefix_kv is not None:
            self.kv = prefix_kv[1]
        elif self.p_len > 0:
            self.kv = self._prefix_pass([p.ids[: p.lookup] for p in rows])
        else:
            self.kv = []
        self._run_to_edit_layer()

    def _fresh_cache(self) -> DynamicCache | None:
        """A KV cache holding exactly the rows' prefixes (each pass appends its suffix to it)."""
        return DynamicCache(ddp_cache_data=self.kv) if self.kv else None

    def _prefix_pass(self, prefixes: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values of every row's prefix, per layer, left-padded to p_len with zeros.

        Rows run in chunks of similar prefix length (little padding computed); masked
        positions get zero keys and values, which attention never reads.
        """
        lm, dev = self.lm, self.lm.device
        base = lm.model.base_model
        chunks, back = chunks_by_length([len(p) for p in prefixes], PREFIX_CHUNK_ROWS)
        parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        for idx in chunks:
            width = max(1, max(len(prefixes[i]) for i in idx))
            ids, mask = pad_left([prefixes[i] for i in idx], lm.tokenizer.pad_token_id, width)
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            cache = DynamicCache()
            with torch.no_grad():
                base(
                    input_ids=ids.to(dev),
                    attention_mask=mask.to(dev),
                    position_ids=pos.to(dev),
                    use_cache=True,
                    **{_cache_keyword(base): cache},
                )
            keep = mask.to(dev)[:, None, :, None].bool()  # rows that are all padding stay zero
            parts.append(
                [
                    (
                        F.pad(torch.where(keep, k, 0.0), (0, 0, self.p_len - width, 0)),
                        F.pad(torch.where(keep, v, 0.0), (0, 0, self.p_len - width, 0)),
                    )
                    for k, v, *_ in cache
                ]
            )
        back = back.to(dev)
        return [
            (torch.cat([p[layer][0] for p in parts])[back], torch.cat([p[layer][1] for p in parts])[back])
            for layer in range(len(parts[0]))
        ]

    def _run_to_edit_layer(self) -> None:
        """Run the suffixes up to the edit layer once: δ only changes what happens above it.

        Keeps that layer's output (the unedited z at column 0) and the arguments the model
        passes to the next block (attention mask, position embeddings, cache), so each step
        can call the upper blocks directly.
        """
        lm = self.lm
        base = lm.model.base_model
        cache = self._fresh_cache()

        def forward():
            with torch.no_grad():
                base(
                    input_ids=self.suffix_ids,
                    attention_mask=self.mask,
                    position_ids=self.suffix_pos,
                    use_cache=cache is not None,
                    **{_cache_keyword(base): cache},
                )

        if self.edit_layer + 1 < lm.num_layers:
            args, self.upper_kwargs = forward_until(
                lm.adapter.block(lm.model, self.edit_layer + 1), forward, before=True
            )
            self.h_edit, self.upper_args = hidden_of(args).detach(), args[1:]
        else:
            self.h_edit = hidden_of(forward_until(lm.adapter.block(lm.model, self.edit_layer), forward)).detach()
            self.upper_args, self.upper_kwargs = (), {}

    def subset(self, facts: list[int]) -> _Group:
        """The same group without the facts that stopped; their cached prefixes are dropped, not recomputed."""
        keep = set(facts)
        rows = [
            r
            for i, f in enumerate(self.facts)
            if f in keep
            for r in range(i * self.rows_per_fact, (i + 1) * self.rows_per_fact)
        ]
        idx = torch.tensor(rows, device=self.lm.device)
        kv = [(k[idx], v[idx]) for k, v in self.kv]
        # The suffix width may shrink with the rows: the suffixes run up to the edit layer again.
        return _Group(
            self.lm,
            [f for f in self.facts if f in keep],
            self.prompts,
            self.edit_layer,
            prefix_kv=(self.p_len, kv) if self.kv else None,
        )

    def __call__(self, delta: torch.Tensor) -> Output:
        """Add δ (b×d, in the order of self.facts) at the subject's last token after the edit layer,
        run the blocks above it, and read the target tokens and the KL prompt."""
        lm = self.lm
        at_subject = torch.zeros_like(self.h_edit)
        at_subject[:, 0] = delta[self.row_fact]
        h = self.h_edit + at_subject
        args, kwargs = _with_cache(self.upper_args, self.upper_kwargs, self._fresh_cache())
        for layer in range(self.edit_layer + 1, lm.num_layers):
            h = hidden_of(lm.adapter.block(lm.model, layer)(h, *args, **kwargs))
        hidden = lm.adapter.norm(lm.model)(h)
        head = lm.model.get_output_embeddings()
        # Losses in float32 whatever the model's dtype (bf16 logits lose the small differences).
        target_logits = head(hidden[self.at_row, self.at_col]).float()
        kl_logits = head(hidden[self.kl_rows, 0]).float()
        logp = F.log_softmax(target_logits, dim=-1).gather(1, self.tok[:, None]).squeeze(1)
        top1 = target_logits.argmax(-1) == self.tok
        return Output(
            facts=self.facts,
            logp=torch.zeros(self.out_shape, device=logp.device).index_put(self.out_index, logp),
            top1=torch.zeros(self.out_shape, dtype=torch.bool, device=logp.device).index_put(self.out_index, top1),
            mask=self.out_mask,
            kl_logp=F.log_softmax(kl_logits, dim=-1),
        )

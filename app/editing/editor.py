"""The Editor: the state sequential editing needs, and the operations on it.

State per edited layer: the base weights W₀, the live batches' factors (ΔW = U Vᵀ) in
the order they were applied, and the preservation sum Σ K Kᵀ of the live batches' keys.
The current weights are always W₀ + Σ live ΔW in order, computed the same way by a
live process and by a replay, so both give the same bits (and the same hash).
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from app.editing.answers import greedy_answers, shows
from app.editing.keys import states_at_lookup
from app.editing.model import LoadedModel
from app.editing.prompts import (
    chat_context_templates,
    encode_with_subject,
    fill,
    generate_context_templates,
    generate_subjects,
)
from app.editing.reading import fact_length_problem, target_probabilities
from app.editing.settings import CHAT_USER_TURNS, EditSettings
from app.editing.solve import nullspace_projector, solve_update
from app.editing.targets import compute_targets
from app.editing.types import (
    BatchResult,
    EditError,
    EditOutcome,
    EditRequest,
    LayerDelta,
    LayerNorms,
    join_deltas,
)

SHOWN_TOKENS = 10  # greedy tokens the editor's own check asks of each written fact's prompt


def hash_weights(weights: dict[int, torch.Tensor]) -> str:
    """sha256 of the edited layers' float32 bytes in layer order: the hash the log stores per version."""
    h = hashlib.sha256()
    for layer in sorted(weights):
        h.update(weights[layer].detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


class Editor:
    def __init__(
        self,
        lm: LoadedModel,
        settings: EditSettings,
        key_stats: dict[int, torch.Tensor] | None = None,
        max_rows: int = 384,
        templates: list[str] | None = None,
        replica: bool = False,
    ):
        """`replica=True`: this editor only replays stored batches (an API replica); it never
        solves, so it needs no key statistics, and apply()/reapply() refuse."""
        lm.check_layers(settings.layers)
        self.replica = replica
        needs_stats = not replica and settings.needs_key_stats
        if needs_stats and (key_stats is None or any(layer not in key_stats for layer in settings.layers)):
            raise EditError("key statistics C₀ are needed for every edited layer: build them with load_key_stats()")
        self.lm = lm
        self.settings = settings
        self.max_rows = max_rows
        self.layers = list(settings.layers)
        self.c0 = (
            {layer: key_stats[layer].double() for layer in self.layers} if needs_stats and key_stats is not None else {}
        )
        self.projector = (
            {
                layer: nullspace_projector(self.c0[layer], settings.nullspace_threshold, settings.nullspace_energy)
                for layer in self.layers
            }
            if needs_stats and settings.method == "alphaedit"
            else {}
        )
        self.base = {layer: self._w(layer).detach().clone() for layer in self.layers}
        f = self.base[self.layers[0]].shape[1]
        self.lambda_n = {
            layer: settings.lambda_n
            * (float(self.c0[layer].trace()) / f if needs_stats and settings.lambda_n_relative else 1.0)
            for layer in self.layers
        }
        # Σ K Kᵀ of the live batches enters only new solves: a replica never solves, so it keeps
        # none (at f = 1536 that is two thirds of the cost of replaying a batch).
        self.preserved = (
            {}
            if replica
            else {layer: torch.zeros(f, f, dtype=torch.float64, device=lm.device) for layer in self.layers}
        )
        # None: a batch whose ΔW is inside a loaded snapshot and whose factors were not loaded.
        self.live: dict[int, list[LayerDelta] | None] = {}
        self._templates = templates
        # Drawn now, from the base weights, so that every process (and a worker restarted onto a
        # replayed log) asks the same neighbours.
        self._subjects = (
            generate_subjects(lm, 4 * settings.neighbour_keys + 8) if settings.neighbour_keys and not replica else None
        )

    # ----- views -----
    def _w(self, layer: int) -> torch.Tensor:
        return self.lm.adapter.weight(self.lm.model, layer)

    @property
    def templates(self) -> list[str]:
        if self._templates is None:
            settings = self.settings
            self._templates = generate_context_templates(
                self.lm, settings.n_prefixes, settings.prefix_tokens
            ) + chat_context_templates(self.lm.tokenizer, CHAT_USER_TURNS[: settings.chat_contexts])
        return self._templates

    @property
    def neighbour_subjects(self) -> list[str]:
        """The generated subjects that neighbour-key preservation asks each fact's relation of."""
        return self._subjects or []

    @property
    def batch_ids(self) -> list[int]:
        return list(self.live)

    def weights_hash(self) -> str:
        return hash_weights({layer: self._w(layer) for layer in self.layers})

    def norms(self) -> list[LayerNorms]:
        out = []
        for layer in self.layers:
            w = self._w(layer).detach().double()
            w0 = self.base[layer].double()
            out.append(LayerNorms(layer, float(w.norm()), float(w0.norm()), float((w - w0).norm()), w0.shape[1]))
        return out

    # ----- editing -----
    def apply(self, requests: list[EditRequest], batch_id: int) -> BatchResult:
        """Run ENCORE on a batch of facts and write it into the weights under `batch_id`; then, with
        settings.reedit_passes, edit again the facts whose greedy answer does not show their target."""
        self._check_new(requests, batch_id)
        t0 = time.perf_counter()
        targets = compute_targets(self.lm, requests, self.templates, self.settings, max_rows=self.max_rows)
        z_seconds = time.perf_counter() - t0
        z_star, steps = targets.z_star.clone(), list(targets.steps)

        def again(facts: list[int]) -> torch.Tensor:
            nonlocal z_seconds
            t = time.perf_counter()
            more = compute_targets(
                self.lm, [requests[i] for i in facts], self.templates, self.settings, self.max_rows, check_bare=True
            )
            z_seconds += time.perf_counter() - t
            for j, i in enumerate(facts):
                z_star[i], steps[i] = more.z_star[j], steps[i] + more.steps[j] + 1
            return more.z_star

        z_first, t1 = z_seconds, time.perf_counter()
        deltas, keys_seconds, passes = self._write(requests, z_star, again)
        solve_seconds = time.perf_counter() - t1 - (z_seconds - z_first)
        self.live[batch_id] = deltas
        after = target_probabilities(self.lm, requests)
        outcomes = [
            EditOutcome(z_star[i].detach().cpu(), steps[i], targets.prob_before[i], after[i])
            for i in range(len(requests))
        ]
        return BatchResult(
            batch_id,
            deltas,
            outcomes,
            z_seconds=z_seconds,
            solve_seconds=solve_seconds,
            keys_seconds=keys_seconds,
            extra={"reedited": passes} if passes else {},
        )

    def reapply(self, requests: list[EditRequest], z_stars: list[torch.Tensor], batch_id: int) -> BatchResult:
        """Write facts whose z* is already known (no optimisation): what a revert does for a batch's other
        edits. With settings.reedit_passes, the facts that do not show are written towards their z* again."""
        self._check_new(requests, batch_id)
        before = target_probabilities(self.lm, requests)
        z_star = torch.stack([z.to(self.lm.device).float() for z in z_stars])
        t0 = time.perf_counter()
        deltas, keys_seconds, passes = self._write(requests, z_star, lambda facts: z_star[facts])
        t1 = time.perf_counter()
        self.live[batch_id] = deltas
        after = target_probabilities(self.lm, requests)
        outcomes = [EditOutcome(z_stars[i].detach().cpu(), 0, before[i], after[i]) for i in range(len(requests))]
        extra = {"reedited": passes} if passes else {}
        return BatchResult(batch_id, deltas, outcomes, solve_seconds=t1 - t0, keys_seconds=keys_seconds, extra=extra)

    def _write(
        self, requests: list[EditRequest], z_star: torch.Tensor, again: Callable[[list[int]], torch.Tensor]
    ) -> tuple[list[LayerDelta], float, list[int]]:
        """Insert z* for every fact, then up to settings.reedit_passes times insert `again(facts)` for the
        facts whose greedy answer to their prompt does not show target_new (arXiv 2503.11895: a single
        insertion under-edits). Returns the batch's factors, the seconds spent on keys and the number of
        facts written again in each pass.

        The passes' factors are joined into one per layer and the weights set to W + that sum in one
        addition, exactly as add_batch() does, so that a replay of the log reaches the same bits."""
        start = self._save_layers()
        deltas, keys_seconds = self._insert(requests, z_star)
        passes: list[int] = []
        try:
            for _ in range(self.settings.reedit_passes):
                facts = self.not_shown(requests)
                if not facts:
                    break
                passes.append(len(facts))
                more, seconds = self._insert([requests[i] for i in facts], again(facts))
                deltas = [join_deltas(pair) for pair in zip(deltas, more, strict=True)]
                keys_seconds += seconds
        except BaseException:
            self._restore_layers(start)
            raise
        if passes:
            self._restore_layers(start)
            with torch.no_grad():
                for d in deltas:
                    self._w(d.layer).add_(d.matrix().to(self.lm.device))
                    self._preserve(d, +1)
        return deltas, keys_seconds, passes

    def not_shown(self, requests: list[EditRequest]) -> list[int]:
        """The facts whose greedy answer to their prompt (SHOWN_TOKENS new tokens) does not show
        target_new, by app/editing/answers.py's rule: indices into `requests`."""
        answers = greedy_answers(self.lm.model, self.lm.tokenizer, [r.text for r in requests], SHOWN_TOKENS)
        return [i for i, (r, a) in enumerate(zip(requests, answers, strict=True)) if not shows(a, r.target_new)]

    def add_batch(self, batch_id: int, deltas: list[LayerDelta]) -> None:
        """Apply stored factors (replay, or an API replica catching up with the worker)."""
        if batch_id in self.live:
            raise EditError(f"batch {batch_id} is already applied")
        by_layer = {d.layer: d for d in deltas}
        if sorted(by_layer) != self.layers:
            raise EditError(f"batch {batch_id} edits layers {sorted(by_layer)}, this editor edits {self.layers}")
        with torch.no_grad():
            for layer in self.layers:
                self._w(layer).add_(by_layer[layer].matrix().to(self.lm.device))
                self._preserve(by_layer[layer], +1)
        self.live[batch_id] = [by_layer[layer] for layer in self.layers]

    def dense_weights(self) -> dict[int, torch.Tensor]:
        """CPU copies of the edited layers, in their own dtype (what a snapshot stores)."""
        return {layer: self._w(layer).detach().to("cpu", copy=True) for layer in self.layers}

    def load_snapshot(
        self, weights: dict[int, torch.Tensor], batch_ids: list[int], deltas: dict[int, list[LayerDelta]] | None = None
    ) -> None:
        """Set the weights to a snapshot holding `batch_ids` (W₀ + their ΔW, in order), so that later
        batches are added onto exactly the bits a full replay would have reached. A replica may pass
        no deltas: they are needed only to rebuild (remove_batch), and fill_deltas() brings them then.
        A solving editor needs every batch's keys for Σ K Kᵀ, so it must pass them all."""
        if self.live:
            raise EditError("a snapshot loads onto the base weights only: reset() first")
        deltas = deltas or {}
        if self.preserved and any(b not in deltas for b in batch_ids):
            raise EditError("an editor that solves needs every live batch's keys (Σ K Kᵀ), not only a snapshot")
        self._check_dense(weights, "the snapshot")  # before any is copied: a refused snapshot leaves W₀ alone
        with torch.no_grad():
            for layer in self.layers:
                self._w(layer).copy_(weights[layer])
            for b in batch_ids:
                for d in deltas.get(b) or []:
                    self._preserve(d, +1)
        self.live = {
            b: ([x for layer in self.layers for x in deltas[b] if x.layer == layer] if b in deltas else None)
            for b in batch_ids
        }

    def save_point(self) -> dict:
        """The edited layers, the preservation sums and the live batches as they are now, for
        restore(): trying a change and taking it back gives the same bits, at any log length."""
        return {
            "weights": {layer: self._w(layer).detach().clone() for layer in self.layers},
            "preserved": {layer: p.clone() for layer, p in self.preserved.items()},
            "live": dict(self.live),
        }

    def restore(self, point: dict) -> None:
        with torch.no_grad():
            for layer in self.layers:
                self._w(layer).copy_(point["weights"][layer])
        self.preserved = {layer: p.clone() for layer, p in point["preserved"].items()}
        self.live = dict(point["live"])

    @contextmanager
    def base_weights(self) -> Iterator[None]:
        """The unedited model for the duration of the block (the edited layers set to W₀), then back."""
        point = {layer: self._w(layer).detach().clone() for layer in self.layers}
        try:
            with torch.no_grad():
                for layer in self.layers:
                    self._w(layer).copy_(self.base[layer])
            yield
        finally:
            with torch.no_grad():
                for layer in self.layers:
                    self._w(layer).copy_(point[layer])

    def missing_deltas(self) -> list[int]:
        """Live batches known only through a snapshot (their factors were never loaded)."""
        return [b for b, d in self.live.items() if d is None]

    def fill_deltas(self, deltas: dict[int, list[LayerDelta]]) -> None:
        for b, ds in deltas.items():
            if b not in self.live:
                raise EditError(f"batch {b} is not applied")
            self.live[b] = sorted(ds, key=lambda d: d.layer)

    def remove_batch(self, batch_id: int, start: tuple[dict[int, torch.Tensor], int] | None = None) -> None:
        """Take a batch out: the weights are rebuilt from W₀, or from `start` = (the dense weights of
        W₀ + the first n live batches, n), by adding the remaining live batches in order: the bits a
        replay of the log without the batch gives. The batch must come after those n.

        Σ K Kᵀ loses the batch's keys by subtraction rather than a rebuild over every live batch
        (the rebuild is what made a revert grow with the log): equal to a replay's sum up to float64
        rounding. It only enters new solves, whose factors the log stores, so the log stays exact."""
        if batch_id not in self.live:
            raise EditError(f"batch {batch_id} is not applied")
        order = list(self.live)
        weights, n = start if start is not None else (self.base, 0)
        if order.index(batch_id) < n:
            raise EditError(f"batch {batch_id} is inside the weights the rebuild starts from")
        self._check_dense(weights, "the rebuild's start")
        rest = [b for b in order[n:] if b != batch_id]
        missing = [b for b in rest if self.live[b] is None]
        if missing:
            # The rebuild adds these batches' factors; the caller loads them first.
            raise EditError(f"batches {missing} came from a snapshot: fill_deltas() before a rebuild")
        removed = self.live.pop(batch_id)
        if self.preserved and removed is None:
            raise EditError(f"batch {batch_id} has no keys loaded: Σ K Kᵀ cannot lose them")
        with torch.no_grad():
            for layer in self.layers:
                self._w(layer).copy_(weights[layer])
            for b in rest:
                for d in self.live[b] or ():  # none is None: checked above
                    self._w(d.layer).add_(d.matrix().to(self.lm.device))
            for d in removed or []:
                self._preserve(d, -1)

    def _preserve(self, delta: LayerDelta, sign: int) -> None:
        """Add (+1) or take out (−1) a batch's keys at one layer in Σ K Kᵀ, the sum later solves keep.
        A replica keeps none."""
        if delta.layer in self.preserved:
            k = delta.keys.double().to(self.lm.device)
            self.preserved[delta.layer].add_(k @ k.T, alpha=sign)

    def _save_layers(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """The edited layers' weights and Σ K Kᵀ as they are now (what a failed write goes back to)."""
        return (
            {layer: self._w(layer).detach().clone() for layer in self.layers},
            {layer: p.clone() for layer, p in self.preserved.items()},
        )

    def _restore_layers(self, saved: tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]) -> None:
        with torch.no_grad():
            for layer in self.layers:
                self._w(layer).copy_(saved[0][layer])
        self.preserved = {layer: p.clone() for layer, p in saved[1].items()}

    def _check_dense(self, weights: dict[int, torch.Tensor], what: str) -> None:
        """Every edited layer, of the model's shape and dtype: checked before any weight is copied."""
        if sorted(weights) != self.layers:
            raise EditError(f"{what} holds layers {sorted(weights)}, this editor edits {self.layers}")
        for layer in self.layers:
            w = self._w(layer)
            if weights[layer].shape != w.shape or weights[layer].dtype != w.dtype:
                raise EditError(
                    f"{what}'s layer {layer} is {tuple(weights[layer].shape)} {weights[layer].dtype}, "
                    f"the model's is {tuple(w.shape)} {w.dtype}"
                )

    def reset(self) -> None:
        """Back to the base weights: every batch dropped in one rebuild."""
        self.live.clear()
        self._rebuild()

    def _rebuild(self) -> None:
        with torch.no_grad():
            for layer in self.layers:
                w = self._w(layer)
                w.copy_(self.base[layer])
                if layer in self.preserved:
                    self.preserved[layer].zero_()
            for deltas in self.live.values():
                assert deltas is not None  # missing_deltas() was checked above
                for d in deltas:
                    self._w(d.layer).add_(d.matrix().to(self.lm.device))
                    self._preserve(d, +1)

    def _check_new(self, requests: list[EditRequest], batch_id: int) -> None:
        if self.replica:
            raise EditError("this editor is a replica: it replays stored batches and never solves new ones")
        if not requests:
            raise EditError("a batch needs at least one fact")
        if batch_id in self.live:
            raise EditError(f"batch {batch_id} is already applied")
        for r in requests:
            r.validate()
        for i, r in enumerate(requests):
            problem = fact_length_problem(self.lm, self.templates, r)
            if problem:
                raise EditError(problem if len(requests) == 1 else f"fact {i + 1} of the batch: {problem}")

    def _encode_key_prompts(self, requests: list[EditRequest]):
        return [
            encode_with_subject(self.lm.tokenizer, fill(t, r.prompt), r.subject)
            for r in requests
            for t in self.templates
        ]

    def _encode_neighbour_prompts(self, requests: list[EditRequest]):
        """Each fact's prompt asked of `neighbour_keys` other subjects (chosen by the fact's subject, so
        the same fact gets the same neighbours in any batch, after a revert or in another process)."""
        k, pool = self.settings.neighbour_keys, self.neighbour_subjects
        out = []
        for r in requests:
            others = [other for other in pool if other != r.subject]
            if not others:  # the model wrote no usable names: nothing to keep in place
                continue
            start = zlib.crc32(r.subject.encode()) % len(others)
            out += [
                encode_with_subject(self.lm.tokenizer, r.prompt, other) for other in (others * 2)[start : start + k]
            ]
        return out

    @torch.no_grad()
    def _insert(self, requests: list[EditRequest], z_star: torch.Tensor) -> tuple[list[LayerDelta], float]:
        """Spread z* − z over the edited layers, lowest first; undo everything if anything fails."""
        settings = self.settings
        n_t = len(self.templates)
        encoded = self._encode_key_prompts(requests)
        bare = encoded[::n_t]
        neighbours = self._encode_neighbour_prompts(requests) if settings.neighbour_keys else []
        start = self._save_layers()
        deltas = []
        keys_seconds = 0.0
        try:
            for i, layer in enumerate(self.layers):
                t0 = time.perf_counter()
                keys, _ = states_at_lookup(self.lm, encoded, [layer], max_rows=self.max_rows)
                # One key per fact: the mean over its context templates.
                k = keys[layer].reshape(len(requests), n_t, -1).mean(1).T.contiguous()  # f×B
                _, z_now = states_at_lookup(
                    self.lm, bare, [layer], output_layer=settings.last_layer, max_rows=self.max_rows
                )
                assert z_now is not None  # asked for with output_layer
                keys_seconds += time.perf_counter() - t0
                residual = (z_star - z_now).T / (len(self.layers) - i)  # d×B
                k32 = k.float()
                keep = self.preserved[layer] if settings.preserve_previous else None
                if neighbours:
                    # Other subjects' outputs at this layer stay where they are: their keys join the
                    # preservation term for this batch's solve (docs/method.md §3).
                    t0 = time.perf_counter()
                    nb = states_at_lookup(self.lm, neighbours, [layer], max_rows=self.max_rows)[0][layer].double()
                    keys_seconds += time.perf_counter() - t0
                    keep = nb.T @ nb if keep is None else keep + nb.T @ nb
                u, v = solve_update(
                    residual,
                    k32,
                    self.c0.get(layer),
                    keep,
                    settings.lambda_p,
                    self.lambda_n[layer],
                    self.projector.get(layer),
                )
                # Rounded before they are applied: the weights receive exactly what the log stores.
                dt = getattr(torch, settings.factor_dtype)
                delta = LayerDelta(layer, u.to(dt).cpu(), v.to(dt).cpu(), k32.to(dt).cpu())
                self._w(layer).add_(delta.matrix().to(self.lm.device))
                self._preserve(delta, +1)
                deltas.append(delta)
        except BaseException:
            self._restore_layers(start)
            raise
        return deltas, keys_seconds

    # ----- persistence (safetensors tensors + JSON metadata; never pickle) -----
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        if self.missing_deltas():
            raise EditError("this editor's batches came from a snapshot without their factors: nothing to save")
        tensors = {}
        for b, deltas in self.live.items():
            assert deltas is not None  # missing_deltas() was checked above
            for d in deltas:
                for name in ("u", "v", "keys"):
                    tensors[f"batch{b}.layer{d.layer}.{name}"] = getattr(d, name).contiguous()
        meta = {
            "settings": self.settings.model_dump(mode="json"),
            "templates": self.templates,
            "batches": list(self.live),
            "weights_hash": self.weights_hash(),
        }
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restore live batches on top of the base weights; checks the weights hash."""
        # Compared as settings, so that a state saved before a field was added (at its default) still loads.
        if EditSettings(**meta["settings"]) != self.settings:
            raise EditError("the saved editor state was made with other settings: " + json.dumps(meta["settings"]))
        self._templates = list(meta["templates"])
        self.live = {
            b: [
                LayerDelta(
                    layer,
                    tensors[f"batch{b}.layer{layer}.u"],
                    tensors[f"batch{b}.layer{layer}.v"],
                    tensors[f"batch{b}.layer{layer}.keys"],
                )
                for layer in self.layers
            ]
            for b in meta["batches"]
        }
        self._rebuild()
        if self.weights_hash() != meta["weights_hash"]:
            raise EditError("replayed weights do not match the saved hash: the base model differs from the one edited")

"""Text generation for many clients at once, each answer from exactly one weights version.

Two paths, both behind `GenerationEngine.open`:

- **greedy** (temperature 0): transformers' own continuous batching (`ContinuousBatchingManager`,
  what `transformers serve` uses). Concurrent requests share its forward passes: a new request
  joins the running batch at the next step, a finished one leaves it.
- **sampled** (temperature > 0): one decode loop per request with its own `torch.Generator`
  (app/editing/sampling.py). The batching manager draws every request's tokens from torch's
  global RNG in one multinomial over the batch, so a request's `seed` could not reproduce its
  text there; OpenAI's `seed` promises that it does.

One version per answer: a request takes the read side of the host's readers-writer lock when it
is admitted and the producer releases it when its last token is out (not when the client has
read it: a client that goes away cannot hold a version switch up beyond max_tokens). A version
switch takes the write side, so it waits for the in-flight sequences to finish while new
requests wait behind it (the lock prefers writers). Every forward pass belongs to a request that
holds the read side, so the weights never change under a forward pass and no sequence ever mixes
two versions.

Bounded: at most `generation_concurrency` requests generate at once (each holds a turn from
admission to its last token) and at most `generation_queue` wait for a turn; a request beyond
that, or one that waited `generation_queue_timeout_s`, is refused with 429 and Retry-After.
"""

from __future__ import annotations

import itertools
import logging
import queue
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from app.editing.model import LoweredCopy
from app.editing.prompts import decode_text
from app.editing.reading import length_problem
from app.editing.sampling import sample_tokens
from app.service.errors import Busy, Invalid, Unavailable
from app.service.host import ModelHost, ReplayMismatch

if TYPE_CHECKING:
    from transformers.generation.continuous_batching.continuous_api import ContinuousBatchingManager

log = logging.getLogger(__name__)

_END = object()


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Generation:
    """One request in flight: the version it reads, and its text as it comes."""

    version: int
    weights_hash: str
    prompt_tokens: int
    sampling: Sampling
    _decode: Callable[[list[int]], str] = field(repr=False)
    _release: Callable[[], None] = field(repr=False)  # frees the version; called by the producer
    _eos: frozenset = field(repr=False, default=frozenset())
    _q: queue.Queue = field(default_factory=queue.Queue, repr=False)
    completion_tokens: int = 0
    finish_reason: str | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.version, self.weights_hash)

    # --- producer side ---
    def _put(self, tokens: list[int]) -> None:
        self._q.put(list(tokens))

    def _end(self, error: str | None = None) -> None:
        self._q.put(RuntimeError(error) if error else _END)

    # --- consumer side ---
    def deltas(self) -> Iterator[str]:
        """The text in pieces as tokens arrive; `finish_reason` and `completion_tokens` are set at the end."""
        stops = self.sampling.stop
        # A piece that could be the start of a stop string is held back until it cannot be.
        hold = max((len(stop) for stop in stops), default=1) - 1
        sent = ""
        tokens: list[int] = []
        while True:
            item = self._q.get()
            if isinstance(item, Exception):
                raise item
            if item is _END:
                break
            tokens = item
            text = self._text(tokens)
            cut = _first_stop(text, stops)
            if cut is not None:
                # Tokens after a stop string are computed (the sequence runs to its end) but never sent.
                if cut > len(sent):
                    yield text[len(sent) : cut]
                self._finish(tokens, "stop")
                return
            # A trailing U+FFFD is half of a multi-byte character whose other bytes are still to come.
            safe = len(text.rstrip("\ufffd")) - hold
            if safe > len(sent):
                yield text[len(sent) : safe]
                sent = text[:safe]
        text = self._text(tokens)
        if len(text) > len(sent):
            yield text[len(sent) :]
        hit_eos = bool(tokens) and tokens[-1] in self._eos
        self._finish(tokens, "stop" if hit_eos or len(tokens) < self.sampling.max_tokens else "length")

    def text(self) -> str:
        return "".join(self.deltas())

    def _text(self, tokens: list[int]) -> str:
        return self._decode(tokens)

    def _finish(self, tokens: list[int], reason: str) -> None:
        self.completion_tokens, self.finish_reason = len(tokens), reason


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(stop) for stop in stops if stop) if i >= 0]
    return min(hits) if hits else None


RETRY_AFTER_S = 2  # what a refused client is told to wait; one short generation's time


class Turns:
    """The bound on generations: `running` turns, `waiting` places in the queue for one, and how
    long a place is kept (a freed turn wakes the longest waiter; a newcomer may still take it first)."""

    def __init__(self, running: int, waiting: int, wait_s: float):
        self.running_bound, self.waiting_bound, self.wait_s = running, waiting, wait_s
        self.running = self.waiting = 0
        self._cond = threading.Condition()

    def load(self) -> tuple[int, int]:
        """(running, waiting) now."""
        with self._cond:
            return self.running, self.waiting

    def take(self) -> None:
        """Block until this request may generate (then `give_back` must follow), or raise Busy."""
        with self._cond:
            if self.running >= self.running_bound:
                if self.waiting >= self.waiting_bound:
                    raise Busy(
                        f"the server is busy: {self.running} generations running and {self.waiting} waiting, "
                        f"its bounds (KEDIT_GENERATION_CONCURRENCY, KEDIT_GENERATION_QUEUE); retry in "
                        f"{RETRY_AFTER_S} s",
                        RETRY_AFTER_S,
                    )
                self.waiting += 1
                try:
                    turn = self._cond.wait_for(lambda: self.running < self.running_bound, timeout=self.wait_s)
                finally:
                    self.waiting -= 1
                if not turn:
                    raise Busy(
                        f"the server is busy: no generation turn came free within {self.wait_s:g} s "
                        f"(KEDIT_GENERATION_QUEUE_TIMEOUT_S); retry in {RETRY_AFTER_S} s",
                        RETRY_AFTER_S,
                    )
            self.running += 1

    def give_back(self) -> None:
        with self._cond:
            self.running -= 1
            self._cond.notify()


def fingerprint(version: int, weights_hash: str) -> str:
    """OpenAI's `system_fingerprint`: which weights produced the answer (version and hash)."""
    return f"kedit-v{version}-{weights_hash[:16]}"


class GenerationEngine:
    """Admits requests under the host's version lock and runs them (see the module docstring)."""

    def __init__(
        self,
        host: ModelHost,
        cache_blocks: int = 32,
        batch_tokens: int = 512,
        serve_dtype: str = "float32",
        turns: Turns | None = None,
    ):
        self.host = host
        self.turns = turns or Turns(8, 32, 30.0)
        self.lm = host.editor.lm
        # The weights are edited and replayed in float32 (the log's hash is over float32 weights, and
        # the rank-one-ish updates are small next to W: bf16 would round many of them away). A
        # bf16 / fp16 copy for serving halves the memory the forward passes read; it is a separate
        # module whose edited layers are copied from the float32 weights at each version switch.
        self.serve_dtype = getattr(torch, serve_dtype)
        self._copy = LoweredCopy(self.lm, host.layers, self.serve_dtype)
        self.model = self._copy.model
        if self.serve_dtype != torch.float32:
            host.on_change.append(self._copy.refresh)
        tok = self.lm.tokenizer
        eos = self.lm.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.eos_ids = sorted({*eos, *([tok.eos_token_id] if tok.eos_token_id is not None else [])})
        self._cache_blocks, self._batch_tokens = cache_blocks, batch_tokens
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        # One sequence must fit the paged cache whole, or the manager would wait for room forever.
        self.cache_tokens = cache_blocks * ContinuousBatchingConfig().page_size
        self._mgr: ContinuousBatchingManager | None = None
        self._routes: dict[str, Generation] = {}
        self._routes_lock = threading.Lock()
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._dispatcher: threading.Thread | None = None
        self._start_lock = threading.Lock()

    # --- the batching manager ---
    def _manager(self):
        with self._start_lock:
            if self._mgr is None:
                from transformers import GenerationConfig
                from transformers.generation.configuration_utils import ContinuousBatchingConfig

                gen_config = GenerationConfig(
                    do_sample=False,
                    max_new_tokens=16,
                    eos_token_id=self.eos_ids or -1,
                    pad_token_id=self.lm.tokenizer.pad_token_id,
                )
                # A bounded paged KV cache: by default the manager sizes it to a share of the
                # device's free memory, which on a CPU host means tens of GB and a long start.
                cb_config = ContinuousBatchingConfig(num_blocks=self._cache_blocks, max_batch_tokens=self._batch_tokens)
                mgr = self.model.init_continuous_batching(
                    generation_config=gen_config, continuous_batching_config=cb_config
                )
                mgr.start()
                self._mgr = mgr
                self._dispatcher = threading.Thread(
                    target=self._dispatch, args=(mgr,), name="kedit-cb-dispatch", daemon=True
                )
                self._dispatcher.start()
            return self._mgr

    def _dispatch(self, mgr: ContinuousBatchingManager) -> None:
        """Route the manager's outputs to their requests; end a request (and free its version) when it finishes."""
        while not self._stop.is_set():
            out = mgr.get_result(timeout=0.2)
            if out is None:
                if not mgr.is_running() and not self._stop.is_set():
                    self._fail_all("the batching loop stopped; retry the request")
                continue
            with self._routes_lock:
                gen = self._routes.get(out.request_id)
                if gen is not None and out.is_finished():
                    del self._routes[out.request_id]
            if gen is None:
                continue
            gen._put(out.generated_tokens)
            if out.is_finished():
                gen._end(out.error)
                gen._release()

    def _fail_all(self, reason: str) -> None:
        with self._routes_lock:
            gens, self._routes = list(self._routes.values()), {}
        for gen in gens:
            gen._end(reason)
            gen._release()

    def close(self) -> None:
        self._stop.set()
        if self._mgr is not None:
            try:
                self._mgr.stop(block=True, timeout=10)
            except Exception:
                log.exception("stopping the batching manager failed")
        self._fail_all("the server is shutting down")
        if self._dispatcher is not None:
            self._dispatcher.join(timeout=5)

    # --- requests ---
    def catch_up(self) -> None:
        """Read-your-writes: an edit reported `applied` is in the weights that answer next. If the
        log cannot be read, answer from the version held (it is in the answer)."""
        try:
            self.host.sync()
        except ReplayMismatch:
            raise
        except Exception:
            log.warning("could not check the log for new versions; answering from version %d", self.host.version)

    def open_text(self, prompt: str, sampling: Sampling) -> Generation:
        """`open` for a text prompt (tokenized as the model's tokenizer does): GET|POST /generate
        and the dashboard's answers."""
        return self.open(self.lm.tokenizer(prompt)["input_ids"], sampling)

    def open(self, input_ids: Sequence[int], sampling: Sampling) -> Generation:
        """Admit a request: hold the current version until its sequence ends, and start it."""
        if self._stop.is_set():
            raise Unavailable("the server is shutting down")
        if not input_ids:
            raise Invalid("the prompt holds no tokens (after the chat template, if any); give some text to continue")
        problem = length_problem(self.host.editor.lm, len(input_ids), sampling.max_tokens, "max_tokens")
        if problem:
            raise Invalid(problem)
        if len(input_ids) + sampling.max_tokens > self.cache_tokens:
            raise Invalid(
                f"the prompt is {len(input_ids)} tokens and max_tokens {sampling.max_tokens}: together more "
                f"than this server's KV cache of {self.cache_tokens} tokens (KEDIT_CB_CACHE_BLOCKS); "
                "shorten the prompt or lower max_tokens"
            )
        self.turns.take()
        try:
            self.catch_up()
            # The manager starts before the version is held, so a failing start never leaves it held.
            mgr = self._manager() if sampling.temperature <= 0 else None
            holding = self.host.reading()
            version = holding.__enter__()
        except BaseException:
            self.turns.give_back()
            raise
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                holding.__exit__(None, None, None)
                self.turns.give_back()

        tok = self.lm.tokenizer
        gen = Generation(
            version=version,
            weights_hash=self.host.weights_hash,
            prompt_tokens=len(input_ids),
            sampling=sampling,
            _decode=lambda t: decode_text(tok, t, skip_special_tokens=True),
            _eos=frozenset(self.eos_ids),
            _release=release,
        )
        try:
            if mgr is not None:
                rid = f"kedit-{next(self._ids)}"
                with self._routes_lock:
                    self._routes[rid] = gen
                mgr.add_request(
                    list(input_ids),
                    request_id=rid,
                    max_new_tokens=sampling.max_tokens,
                    streaming=True,
                    eos_token_id=self.eos_ids or -1,
                )
            else:
                seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
                threading.Thread(
                    target=self._sample, args=(gen, list(input_ids), seed), daemon=True, name="kedit-sample"
                ).start()
        except BaseException:
            with self._routes_lock:
                self._routes = {k: g for k, g in self._routes.items() if g is not gen}
            release()
            raise
        return gen

    def _sample(self, gen: Generation, input_ids: list[int], seed: int) -> None:
        sampling = gen.sampling
        tokens: list[int] = []
        error = None
        try:
            for t in sample_tokens(
                self.model, input_ids, sampling.max_tokens, sampling.temperature, sampling.top_p, seed, self.eos_ids
            ):
                tokens.append(t)
                gen._put(tokens)
        except Exception as e:  # reported to the client; the version must be freed either way
            log.exception("sampling failed")
            error = f"generation failed: {e}"
        finally:
            gen._release()
            gen._end(error)

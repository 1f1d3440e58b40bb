"""Thread pools of their own, so that one kind of work cannot starve another.

FastAPI runs every sync route and dependency in one shared pool (anyio's default, 40 threads). A
generation holds a thread while it waits for its turn and its tokens, so a flood of them would
take that pool whole, and the probes (/ready, /metrics) would wait behind them just when an
operator needs them. So generations run in a pool of their own, sized to what the engine admits
(its turns and queue, plus a few threads for the requests it refuses at once), and the probes in
another (/health needs no thread at all).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from anyio import CapacityLimiter, to_thread

PROBE_THREADS = 4
REFUSING_THREADS = 8


class Pools:
    def __init__(self, generation_turns: int, generation_queue: int):
        self.generation = CapacityLimiter(generation_turns + generation_queue + REFUSING_THREADS)
        self.probes = CapacityLimiter(PROBE_THREADS)


async def run_in(limiter: CapacityLimiter, fn: Callable, *args: Any) -> Any:
    return await to_thread.run_sync(functools.partial(fn, *args), limiter=limiter)


async def iterate_in(limiter: CapacityLimiter, iterator: Iterator) -> AsyncIterator:
    """A blocking iterator (a stream's events) read one item at a time in the pool."""
    done = object()
    while (item := await to_thread.run_sync(next, iterator, done, limiter=limiter)) is not done:
        yield item

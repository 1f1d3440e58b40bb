"""Work and wake-ups: a Redis Stream with a consumer group, or an in-process queue, behind one interface.

The queue only carries work; the database is the truth. A message names an edit (to apply, or
to revert); the worker looks the edit up and skips it unless its row still asks for that work,
so a redelivered message never applies anything twice. Version announcements ("the log now
ends at version N") go over Redis pub/sub, or to in-process subscribers.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

log = logging.getLogger(__name__)

Kind = Literal["edit", "revert"]


@dataclass(frozen=True)
class Message:
    id: str
    kind: Kind
    edit_id: int


class Subscription(Protocol):
    def wait(self, timeout: float) -> int | None:
        """The newest version announced since the last call, or None after `timeout` seconds."""

    def close(self) -> None: ...


class WorkQueue(Protocol):
    def put(self, kind: Kind, edit_ids: list[int]) -> None: ...

    def ensure(self) -> bool:
        """Make sure the queue exists; True if it had to be created (its content may be lost: refill)."""

    def take(self, max_items: int, first_wait_s: float, batch_wait_s: float) -> list[Message]:
        """Up to max_items messages: block up to first_wait_s for the first, then at most
        batch_wait_s more for the rest. Stale entries of a dead consumer come first."""

    def ack(self, messages: list[Message]) -> None: ...

    def depth(self) -> int:
        """Entries not yet acknowledged (waiting or being worked on)."""

    def publish_version(self, version: int) -> None: ...

    def subscribe_versions(self) -> Subscription: ...

    def ping(self) -> bool: ...

    def wake(self) -> None:
        """Let a blocked take() return early (shutdown)."""

    def close(self) -> None: ...


# --- in-process ------------------------------------------------------------------------------


class _LocalSubscription:
    def __init__(self, owner: LocalQueue):
        self._owner = owner
        self._cond = threading.Condition()
        self._latest: int | None = None

    def _announce(self, version: int) -> None:
        with self._cond:
            self._latest = version if self._latest is None else max(self._latest, version)
            self._cond.notify_all()

    def wait(self, timeout: float) -> int | None:
        with self._cond:
            if self._latest is None:
                self._cond.wait(timeout)
            v, self._latest = self._latest, None
            return v

    def close(self) -> None:
        self._owner._unsubscribe(self)


class LocalQueue:
    """The embedded mode's queue: one process, api and worker threads. Lost with the process,
    which is fine: the worker refills it from the `queued` rows when it starts."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: deque[Message] = deque()
        self._pending: dict[str, Message] = {}
        self._ids = itertools.count(1)
        self._subs: list[_LocalSubscription] = []
        self._created = False

    def put(self, kind: Kind, edit_ids: list[int]) -> None:
        with self._cond:
            for eid in edit_ids:
                self._waiting.append(Message(str(next(self._ids)), kind, int(eid)))
            self._cond.notify_all()

    def ensure(self) -> bool:
        with self._cond:
            created, self._created = not self._created, True
            return created

    def take(self, max_items: int, first_wait_s: float, batch_wait_s: float) -> list[Message]:
        out: list[Message] = []
        with self._cond:
            # Entries handed out and never acked belong to a worker loop that died: hand them out again.
            while self._pending and len(out) < max_items:
                out.append(self._pending.pop(next(iter(self._pending))))
            if not out and not self._waiting:
                self._cond.wait(first_wait_s)
            deadline = time.monotonic() + batch_wait_s
            while len(out) < max_items:
                if self._waiting:
                    out.append(self._waiting.popleft())
                    continue
                if not out:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            for m in out:
                self._pending[m.id] = m
        return out

    def ack(self, messages: list[Message]) -> None:
        with self._cond:
            for m in messages:
                self._pending.pop(m.id, None)

    def depth(self) -> int:
        with self._cond:
            return len(self._waiting) + len(self._pending)

    def publish_version(self, version: int) -> None:
        for sub in list(self._subs):
            sub._announce(version)

    def subscribe_versions(self) -> Subscription:
        sub = _LocalSubscription(self)
        self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: _LocalSubscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def ping(self) -> bool:
        return True

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        self.wake()


# --- Redis -----------------------------------------------------------------------------------


class _RedisSubscription:
    def __init__(self, client, channel: str):
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)

    def wait(self, timeout: float) -> int | None:
        latest: int | None = None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic() if latest is None else 0.0
            msg = self._pubsub.get_message(timeout=max(0.0, remaining))
            if msg is None:
                if latest is not None or time.monotonic() >= deadline:
                    return latest
                continue
            try:
                v = int(msg["data"])
            except (TypeError, ValueError):
                continue
            latest = v if latest is None else max(latest, v)

    def close(self) -> None:
        try:
            self._pubsub.close()
        except Exception:
            pass


class RedisQueue:
    """A Redis Stream read through a consumer group.

    put = XADD; take = XAUTOCLAIM of entries pending longer than `reclaim_idle_ms` (their
    consumer died) then XREADGROUP; ack = XACK + XDEL (the database keeps the history, the
    stream only what is still to do, so XLEN is the queue depth).
    """

    def __init__(self, url: str, prefix: str = "kedit", consumer: str | None = None, reclaim_idle_ms: int = 60_000):
        import redis

        self._redis = redis
        self.client = redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)
        self.stream = f"{prefix}:edits"
        self.group = f"{prefix}:workers"
        self.channel = f"{prefix}:versions"
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.reclaim_idle_ms = reclaim_idle_ms

    def put(self, kind: Kind, edit_ids: list[int]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for eid in edit_ids:
            pipe.xadd(self.stream, {"kind": kind, "edit_id": str(int(eid))})
        pipe.execute()

    def ensure(self) -> bool:
        existed = bool(self.client.exists(self.stream))
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except self._redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
            return False
        # A new group (on a new stream, or on one the api filled before any worker ran) starts
        # at 0, so nothing in the stream is skipped; the caller still refills from the database,
        # since a missing group usually means Redis lost everything. Duplicates are skipped.
        if existed:
            log.info("created consumer group %s on the existing stream %s", self.group, self.stream)
        return True

    def _parse(self, entries) -> list[Message]:
        out = []
        for mid, fields in entries:
            if not fields:  # deleted while pending
                continue
            kind = fields.get("kind", "edit")
            out.append(Message(mid, "revert" if kind == "revert" else "edit", int(fields["edit_id"])))
        return out

    def claim_stale(self, max_items: int, min_idle_ms: int | None = None) -> list[Message]:
        idle = self.reclaim_idle_ms if min_idle_ms is None else min_idle_ms
        _next, claimed, *_deleted = self._group_call(
            self.client.xautoclaim,
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=idle,
            start_id="0-0",
            count=max_items,
        )
        msgs = self._parse(claimed)
        # Entries deleted from the stream but still pending can never be processed: drop them.
        if _deleted and _deleted[0]:
            self.client.xack(self.stream, self.group, *_deleted[0])
        return msgs

    def _group_call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self._redis.ResponseError as e:
            if "NOGROUP" in str(e):
                # Redis lost the stream under us (restart without persistence); the worker's
                # refill pass brings the work back from the database.
                raise QueueLost(str(e)) from e
            raise

    def _read(self, count: int, block_ms: int | None) -> list[Message]:
        resp = self._group_call(
            self.client.xreadgroup, self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        out: list[Message] = []
        for _stream, entries in resp or []:
            out.extend(self._parse(entries))
        return out

    def take(self, max_items: int, first_wait_s: float, batch_wait_s: float) -> list[Message]:
        out = self.claim_stale(max_items)
        if len(out) < max_items:
            # BLOCK 0 would mean "forever": always block at least 1 ms when asked to wait.
            out += self._read(max_items - len(out), max(1, int(first_wait_s * 1000)) if not out else None)
        deadline = time.monotonic() + batch_wait_s
        while out and len(out) < max_items:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            out += self._read(max_items - len(out), remaining_ms)
        return out

    def ack(self, messages: list[Message]) -> None:
        if not messages:
            return
        ids = [m.id for m in messages]
        pipe = self.client.pipeline(transaction=True)
        pipe.xack(self.stream, self.group, *ids)
        pipe.xdel(self.stream, *ids)
        pipe.execute()

    def depth(self) -> int:
        return int(self.client.xlen(self.stream))

    def publish_version(self, version: int) -> None:
        self.client.publish(self.channel, str(int(version)))

    def subscribe_versions(self) -> Subscription:
        return _RedisSubscription(self.client, self.channel)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except Exception:
            return False

    def wake(self) -> None:
        pass  # a blocked XREADGROUP returns within its block time (about a second)

    def close(self) -> None:
        self.client.close()


class QueueLost(RuntimeError):
    """The stream or its consumer group vanished (Redis restarted empty)."""


def make_queue(redis_url: str | None, prefix: str = "kedit", reclaim_idle_ms: int = 60_000) -> WorkQueue:
    if redis_url:
        return RedisQueue(redis_url, prefix=prefix, reclaim_idle_ms=reclaim_idle_ms)
    return LocalQueue()

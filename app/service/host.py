"""The weights a process serves or edits: base + the live deltas of the log, kept in step with it.

Every process (api replica or worker) owns one ModelHost. At start it replays the log (base +
live batches in version order) and proves the result against the hash stored with the head
version; it refuses to serve on a mismatch. Afterwards `sync()` walks new versions in order
(a batch adds its deltas; a revert removes one batch and adds its survivors' new batch) under
the write side of a readers-writer lock, so `/generate` only ever sees whole versions.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import torch
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.editing.editor import hash_weights
from app.editing.model import LoadedModel
from app.editing.progress import SILENT, Monitor
from app.editing.reading import generate
from app.editing.types import BatchResult, EditError, EditRequest, LayerDelta, LayerNorms
from app.service.rwlock import RWLock
from app.store import repo
from app.store.codec import weights_from_bytes
from app.store.db import transaction

log = logging.getLogger(__name__)


class EditorLike(Protocol):
    """The part of app.editing.editor.Editor the service relies on."""

    lm: LoadedModel
    layers: list[int]

    def apply(self, requests: list[EditRequest], batch_id: int) -> BatchResult: ...
    def add_batch(self, batch_id: int, deltas: list[LayerDelta]) -> None: ...
    def remove_batch(self, batch_id: int, start: tuple[dict[int, torch.Tensor], int] | None = None) -> None: ...
    def dense_weights(self) -> dict[int, torch.Tensor]: ...
    def load_snapshot(
        self, weights: dict[int, torch.Tensor], batch_ids: list[int], deltas: dict[int, list[LayerDelta]] | None = None
    ) -> None: ...
    def missing_deltas(self) -> list[int]: ...
    def fill_deltas(self, deltas: dict[int, list[LayerDelta]]) -> None: ...
    def reset(self) -> None: ...
    def reapply(self, requests: list[EditRequest], z_stars: list[torch.Tensor], batch_id: int) -> BatchResult: ...
    def weights_hash(self) -> str: ...
    def norms(self) -> list[LayerNorms]: ...
    def save_point(self) -> dict: ...
    def restore(self, point: dict) -> None: ...
    def base_weights(self) -> AbstractContextManager[None]: ...
    @property
    def batch_ids(self) -> list[int]: ...


def _unusable(version: int, why: str) -> dict[int, torch.Tensor] | None:
    """None, the weights of a weight snapshot passed over, after logging why (a rebuild then starts
    from an older one, or W₀)."""
    log.error("weight snapshot of version %d %s: not using it", version, why)
    return None


def _reset(editor: EditorLike) -> None:
    """Back to the base weights in one rebuild (removing n batches one by one would cost O(n²))."""
    if editor.batch_ids:
        editor.reset()


def snapshot_schedule(versions: Sequence[int], head: int, every: int, keep: int) -> set[int]:
    """Which snapshots to keep: the newest two, then the oldest one in each span of ages
    [every·2^k, every·2^(k+1)), nearest spans first, `keep` in all. A revert rebuilds from the
    newest snapshot before its batch, so a batch of any age finds one at most about its own age
    older than itself (plus `every` for the young), for log(versions) snapshots of storage."""
    ordered = sorted(versions, reverse=True)
    kept = set(ordered[: min(2, keep)])
    spans: dict[int, int] = {}
    for v in ordered[2:]:
        age = max(head - v, every)
        spans[int(math.log2(age / every))] = v  # newest first: the last one written is the span's oldest
    for span in sorted(spans):
        if len(kept) >= keep:
            break
        kept.add(spans[span])
    return kept


class ReplayMismatch(RuntimeError):
    """The rebuilt weights do not hash to what the log recorded: serving them would be a lie."""


class ModelHost:
    def __init__(
        self,
        editor: EditorLike,
        sessions: sessionmaker[Session],
        model_name: str,
        layers: Sequence[int],
        settings: dict | None = None,
        templates: list[str] | None = None,
    ):
        self.editor = editor
        self.sessions = sessions
        self.model_name = model_name
        self.layers = list(layers)
        self.settings = settings or {}
        self.templates = templates
        self.version = 0
        self.weights_hash = ""
        self.base_hash = ""
        self.healthy = False
        self.problem: str | None = None
        self._rw = RWLock()
        self._sync_mutex = threading.Lock()
        # Called under the write lock after every change of the weights (a served copy in another
        # dtype follows the float32 weights here, before any reader sees the new version).
        self.on_change: list = []
        # Start from the newest usable weight snapshot (off: always replay from W₀, e.g. to check one).
        self.use_snapshots = True

    # --- start ----------------------------------------------------------------------------

    def bootstrap(self, monitor: Monitor = SILENT) -> None:
        """Check the base weights against the log's model, then replay the log onto them."""
        if self.editor.batch_ids:
            raise RuntimeError("bootstrap needs an editor holding the base weights only")
        self.base_hash = self.editor.weights_hash()
        try:
            self._check_model_info()
        except IntegrityError:
            # An api and a worker started together on an empty log; the other one wrote it.
            self._check_model_info()
        self.weights_hash = self.base_hash
        self.replay(monitor=monitor)

    def _check_model_info(self) -> None:
        with transaction(self.sessions) as session:
            info = repo.get_model_info(session)
            if info is None:
                repo.put_model_info(
                    session, self.model_name, self.base_hash, self.layers, self.settings, self.templates
                )
                return
            if list(info.layers) != self.layers:
                raise ReplayMismatch(
                    f"the edit log was written for layers {info.layers} but this process edits {self.layers}: "
                    "start it with the same settings, or point it at another database"
                )
            if info.base_hash != self.base_hash:
                raise ReplayMismatch(
                    f"the edit log was written on base weights {info.base_hash[:12]} ({info.name}) but the loaded "
                    f"model {self.model_name} hashes to {self.base_hash[:12]} on the edited layers: load the same "
                    "model, or point it at another database"
                )
            if self.templates and not info.templates:
                info.templates = list(self.templates)

    def replay(self, at_version: int | None = None, monitor: Monitor = SILENT) -> None:
        """Base + the deltas live at `at_version` (default: the head) in version order, proven against
        that version's stored hash. An older version is for reading (export), not for following the log.
        `monitor` hears of every batch added and can stop the replay between two (Cancelled)."""
        with self._rw.write(), self._sync_mutex:
            _reset(self.editor)
            with self.sessions() as session:
                if at_version is None:
                    target = repo.head_version(session)
                elif at_version == 0:
                    target = None
                else:
                    target = repo.get_version(session, at_version)
                    if target is None:
                        raise LookupError(
                            f"version {at_version} is not in the log (the head is {repo.head_version_id(session)})"
                        )
                batches = repo.live_batches(session, at_version)
                if batches and self.use_snapshots:
                    monitor.begin("replaying the log", f"{len(batches):,} live batches: looking for a weight snapshot")
                start, from_version = self._load_snapshot(session, batches, target.id if target else 0)
                rest = batches[start:]
                monitor.begin(
                    "replaying the log",
                    f"{len(rest):,} live batches" + (f" after the snapshot of version {from_version}" if start else ""),
                    total=len(rest),
                    unit="batches",
                )
                for i, (batch_id, deltas) in enumerate(repo.batches_deltas(session, [b.id for b in rest]), 1):
                    monitor.check()
                    self.editor.add_batch(batch_id, deltas)
                    monitor.advance(i)
            self._prove(target.id if target else 0, target.weights_hash if target else self.base_hash)
            if from_version:
                log.info(
                    "replayed %d live batches up to version %d: the snapshot of version %d holding %d, then %d deltas",
                    len(batches),
                    self.version,
                    from_version,
                    start,
                    len(batches) - start,
                )
            else:
                log.info("replayed %d live batches up to version %d", len(batches), self.version)

    def _load_snapshot(self, session: Session, batches: list, up_to: int) -> tuple[int, int]:
        """Load the newest usable snapshot at or before `up_to`; returns (batches it holds, its version),
        (0, 0) when none is usable (the editor then still holds W₀ and replay starts from there).

        Usable: its batches are still live, so they are the first live batches in replay order and
        every other live batch is newer than it; W₀ + the same ΔW in the same order in float32 are
        the same bits, so snapshot + later deltas = a full replay, bit for bit. A snapshot a revert
        invalidated holds a batch that is no longer live and is skipped."""
        if not self.use_snapshots or up_to == 0:
            return 0, 0
        live_ids = [b.id for b in batches]
        for snap in repo.snapshots(session, up_to):
            n = len(snap.batch_ids)
            if list(snap.batch_ids) != live_ids[:n] or any(b.created_version > snap.version for b in batches[:n]):
                continue
            if n < len(batches) and batches[n].created_version <= snap.version:
                continue
            version = repo.get_version(session, snap.version)
            data = repo.snapshot_data(session, snap.version)
            if version is None or data is None:
                continue
            if hashlib.sha256(data).hexdigest() != snap.sha256:
                log.error(
                    "weight snapshot of version %d is corrupt (its bytes hash to %s, it was stored as %s): "
                    "not using it",
                    snap.version,
                    hashlib.sha256(data).hexdigest()[:12],
                    snap.sha256[:12],
                )
                continue
            # A replica never solves, so it needs no keys now; a solving editor needs every batch's
            # keys for Σ K Kᵀ (and so loads all deltas; the snapshot saves it the dense additions).
            deltas = (
                None if getattr(self.editor, "replica", False) else dict(repo.batches_deltas(session, snap.batch_ids))
            )
            try:
                self.editor.load_snapshot(weights_from_bytes(data), list(snap.batch_ids), deltas)
                got = self.editor.weights_hash()
            except Exception as exc:
                log.error("weight snapshot of version %d cannot be loaded (%s): not using it", snap.version, exc)
                self.editor.reset()  # unconditionally: the weights may have changed before it failed
                continue
            if got != version.weights_hash:
                log.error(
                    "weight snapshot of version %d hashes to %s, the log says %s: not using it",
                    snap.version,
                    got[:12],
                    version.weights_hash[:12],
                )
                self.editor.reset()
                continue
            return n, snap.version
        return 0, 0

    def _fill_deltas(self, session: Session, batch_ids: Sequence[int] | None = None) -> None:
        """Load the factors of the batches a snapshot stood for (all of them, or those among `batch_ids`)."""
        wanted = None if batch_ids is None else set(batch_ids)
        missing = [b for b in self.editor.missing_deltas() if wanted is None or b in wanted]
        if missing:
            self.editor.fill_deltas(dict(repo.batches_deltas(session, missing)))

    def _snapshot_before(self, session: Session, batch_id: int) -> tuple[dict[int, torch.Tensor], int] | None:
        """The newest usable snapshot that does not hold `batch_id`: (its weights, the live batches it holds).

        Usable: its batches are exactly the first live batches (in this editor's order, which is the
        log's at our version), all before `batch_id`; its bytes match their sha256; its weights hash to
        its version's stored hash. Then W₀ + those batches in order gave exactly these bits, and
        adding the later ones in order gives the bits of a replay without `batch_id`."""
        if not self.use_snapshots:
            return None
        order = self.editor.batch_ids
        pos = order.index(batch_id)
        for snap in repo.snapshots(session, self.version):
            n = len(snap.batch_ids)
            if n == 0 or n > pos or list(snap.batch_ids) != order[:n]:
                continue
            weights = self._checked_snapshot(session, snap)
            if weights is not None:
                return weights, n
        return None

    def _checked_snapshot(self, session: Session, snap) -> dict[int, torch.Tensor] | None:
        """A snapshot's weights if its bytes match their sha256 and the weights its version's hash, else None."""
        version = repo.get_version(session, snap.version)
        data = repo.snapshot_data(session, snap.version)
        if version is None or data is None:
            return None
        # The snapshot stands for W₀ + its batches in order only if they were the live batches of its version.
        if [b.id for b in repo.live_batches(session, snap.version)] != list(snap.batch_ids):
            return None
        digest = hashlib.sha256(data).hexdigest()
        if digest != snap.sha256:
            return _unusable(
                snap.version, f"is corrupt (its bytes hash to {digest[:12]}, it was stored as {snap.sha256[:12]})"
            )
        try:
            weights = weights_from_bytes(data)
            got = hash_weights(weights)
        except Exception as exc:
            return _unusable(snap.version, f"cannot be loaded ({exc})")
        if got != version.weights_hash:
            return _unusable(snap.version, f"hashes to {got[:12]}, the log says {version.weights_hash[:12]}")
        return weights

    def _remove_batch(self, session: Session, batch_id: int) -> None:
        """Take a batch out of the weights: rebuilt from the newest usable snapshot before it, or W₀."""
        start = self._snapshot_before(session, batch_id)
        order = self.editor.batch_ids
        self._fill_deltas(session, order[start[1] if start else 0 :])
        try:
            self.editor.remove_batch(batch_id, start)
        except EditError as exc:
            if start is None:
                raise
            # A snapshot of another model's shapes: refused before any weight was copied.
            log.error("weight snapshot holding %d batches cannot be used (%s): rebuilding from W₀", start[1], exc)
            self._fill_deltas(session)
            self.editor.remove_batch(batch_id)
        if start:
            log.info("batch %d taken out: rebuilt from the snapshot holding %d batches", batch_id, start[1])

    def remove_batch(self, batch_id: int) -> None:
        """For the worker's revert (under writing()): `batch_id` out of the weights, as _remove_batch."""
        with self.sessions() as session:
            self._remove_batch(session, batch_id)

    def fill_missing_deltas(self) -> None:
        """For readers of every live batch's factors (export of deltas) after a start from a snapshot."""
        with self._rw.write(), self._sync_mutex:
            with self.sessions() as session:
                self._fill_deltas(session)

    # --- snapshots (the worker writes them) ------------------------------------------------------

    def snapshot_housekeeping(self, every: int, keep: int = 6) -> int | None:
        """Drop snapshots a revert invalidated; write one of the weights now served when `every`
        versions have passed since the newest; keep those `snapshot_schedule` keeps. Returns the
        version written. Only the worker calls this, after its commit (or at its start): its weights
        are exactly the log's head."""
        with self._rw.read():
            with transaction(self.sessions) as session:
                order = [b.id for b in repo.live_batches(session)]
                live = set(order)
                snaps = repo.snapshots(session)
                stale = [x.version for x in snaps if not set(x.batch_ids) <= live]
                repo.delete_snapshots(session, stale)
                versions = [x.version for x in snaps if x.version not in stale]
                written = None
                newest = versions[0] if versions else 0
                # The editor's batches must be the log's live batches in replay order, or the
                # snapshot would not stand for the prefix a later start assumes.
                if (
                    every > 0
                    and self.version - newest >= every
                    and self.version == repo.head_version_id(session)
                    and self.editor.batch_ids == order
                ):
                    if self.editor.weights_hash() != self.weights_hash:
                        raise ReplayMismatch("the worker's weights are not those of its version: no snapshot")
                    repo.put_snapshot(session, self.version, self.editor.batch_ids, self.editor.dense_weights())
                    written = self.version
                    versions.insert(0, written)
                kept = snapshot_schedule(versions, self.version, max(every, 1), keep)
                dropped = [v for v in versions if v not in kept]
                repo.delete_snapshots(session, dropped)
        if stale:
            log.info("deleted %d weight snapshots a revert made unusable", len(stale))
        if written:
            log.info("wrote a weight snapshot of version %d (%d superseded by the schedule)", written, len(dropped))
        return written

    def _prove(self, version: int, expected: str) -> None:
        got = self.editor.weights_hash()
        if got != expected:
            self.healthy = False
            self.problem = (
                f"weights after replaying to version {version} hash to {got[:12]}, the log says {expected[:12]}: "
                "refusing to serve them"
            )
            raise ReplayMismatch(self.problem)
        self.version, self.weights_hash, self.healthy, self.problem = version, got, True, None
        for listener in self.on_change:
            listener()

    # --- keeping up -------------------------------------------------------------------------

    def head(self) -> int:
        with self.sessions() as session:
            return repo.head_version_id(session)

    def sync(self) -> int:
        """Apply every version after ours, in order; returns the version now served."""
        if self.head() <= self.version:
            return self.version
        with self._rw.write(), self._sync_mutex:
            with self.sessions() as session:
                news = repo.versions_after(session, self.version)
                if not news:
                    return self.version
                for v in news:
                    if v.removed_batch_id is not None:
                        self._remove_batch(session, v.removed_batch_id)
                    if v.added_batch_id is not None:
                        self.editor.add_batch(v.added_batch_id, repo.batch_deltas(session, v.added_batch_id))
            self._prove(news[-1].id, news[-1].weights_hash)
            log.info("now at version %d (%s)", self.version, self.weights_hash[:12])
            return self.version

    def sync_or_rebuild(self) -> None:
        """After anything went wrong mid-change: get back to exactly the log's head."""
        try:
            self.sync()
            if self.editor.weights_hash() == self.weights_hash:
                return
        except Exception:
            log.exception("incremental sync failed; rebuilding from the log")
        self.replay()

    # --- using the weights ------------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[int]:
        """Hold the weights still; yields the version being read."""
        with self._rw.read():
            if not self.healthy:
                raise ReplayMismatch(self.problem or "the weights are not ready")
            yield self.version

    @contextmanager
    def writing(self) -> Iterator[None]:
        """For the worker: no reader sees the weights while the editor changes them."""
        with self._rw.write(), self._sync_mutex:
            yield

    def generate(self, prompt: str, max_new_tokens: int) -> tuple[str, int, str]:
        with self.reading() as version:
            return generate(self.editor.lm, prompt, max_new_tokens), version, self.weights_hash

    def advance(self, version: int, weights_hash: str) -> None:
        """The worker committed `version` from its own editor: record it without replaying."""
        self.version, self.weights_hash = version, weights_hash

    def current_norms(self) -> list[LayerNorms]:
        with self._rw.read():
            return self.editor.norms()

"""Weight snapshots: a start loads the newest usable snapshot and replays only the later deltas, and
reaches the same bits (the same hash) as a full replay from W₀; a revert of an edit older than the
snapshot still works; a corrupt snapshot is refused and the start falls back to a full replay.
Real tiny model, real worker, real SQLite (and one PostgreSQL) log."""

from __future__ import annotations

import logging

import pytest
import torch
from sqlalchemy import select, update

from app.queue import LocalQueue
from app.service import edits as edit_service
from app.service.context import ServiceContext
from app.store import repo
from app.store.db import transaction
from app.store.models import WeightSnapshot
from tests.utils.service import FACTS


@pytest.fixture
def rig(make_config):
    """B = 1 and a snapshot every 2 versions: three edits give versions 1..3 and a snapshot of version 2."""
    ctx = ServiceContext.open(make_config(batch_size=1, snapshot_every=2), queue=LocalQueue())
    worker = ctx.build_worker()
    assert worker.lock.try_acquire()
    yield ctx, worker
    worker.lock.release()
    ctx.close()


def apply(ctx, worker, facts) -> list[int]:
    rows, _ = edit_service.submit(ctx.sessions, ctx.queue, facts)
    for _ in facts:
        assert worker.step().applied
    return [e.id for e in rows]


def snapshot_versions(ctx) -> list[int]:
    with ctx.sessions() as s:
        return [x.version for x in repo.snapshots(s)]


def head_hash(ctx) -> tuple[int, str]:
    with ctx.sessions() as s:
        v = repo.head_version(s)
        return v.id, v.weights_hash


def full_replica(ctx):
    """A replica that replays from W₀ only: what every start did before snapshots (and `kedit verify` does)."""
    return ctx.host_replica(use_snapshots=False)


def same_bits(a, b) -> bool:
    wa, wb = a.editor.dense_weights(), b.editor.dense_weights()
    return all(torch.equal(wa[layer], wb[layer]) for layer in wa)


def test_snapshot_plus_later_deltas_equals_full_replay(rig):
    ctx, worker = rig
    apply(ctx, worker, FACTS[:3])
    assert snapshot_versions(ctx) == [2]
    with ctx.sessions() as s:
        in_snapshot = list(repo.snapshots(s)[0].batch_ids)
    assert len(in_snapshot) == 2

    replica = ctx.host_replica()
    # It started from the snapshot: the two batches in it were never loaded, the third was.
    assert replica.editor.missing_deltas() == in_snapshot
    assert len(replica.editor.batch_ids) == 3
    full = full_replica(ctx)
    assert full.editor.missing_deltas() == []
    assert (replica.version, replica.weights_hash) == head_hash(ctx) == (full.version, full.weights_hash)
    assert same_bits(replica, full)
    # A solving editor (a second worker starting) also starts from it, with every batch's keys in
    # Σ K Kᵀ: its preservation sums equal those of the worker that made every edit.
    ctx2 = ServiceContext.open(ctx.config, queue=LocalQueue())  # another worker process on the same log
    try:
        other = ctx2.build_worker()
        assert other.host.weights_hash == worker.host.weights_hash
        assert other.host.editor.missing_deltas() == []
        for layer, p in worker.host.editor.preserved.items():
            assert torch.allclose(other.host.editor.preserved[layer], p, rtol=1e-12, atol=0)
    finally:
        ctx2.close()

    # The replica follows new versions from there.
    apply(ctx, worker, FACTS[3:4])
    replica.sync()
    assert (replica.version, replica.weights_hash) == head_hash(ctx)
    assert snapshot_versions(ctx) == [4, 2]


def test_revert_of_an_edit_older_than_the_snapshot(rig):
    ctx, worker = rig
    ids = apply(ctx, worker, FACTS[:3])
    replica = ctx.host_replica()
    assert replica.editor.missing_deltas()  # from the snapshot of version 2

    edit_service.request_revert(ctx.sessions, ctx.queue, ids[0])  # in the snapshot
    report = worker.step()
    assert report.applied == [ids[0]] and report.version == 4
    # The snapshot of version 2 holds the reverted batch: it no longer stands for any live prefix, so it
    # is gone; none is left, so one of the new head is written.
    assert snapshot_versions(ctx) == [4]
    with ctx.sessions() as s:
        assert repo.snapshots(s)[0].batch_ids == [b.id for b in repo.live_batches(s)]
    # A replica that started from it rebuilds from W₀ with every live batch's factors.
    replica.sync()
    assert replica.editor.missing_deltas() == []
    assert (replica.version, replica.weights_hash) == head_hash(ctx)

    # Snapshots after the revert are exact again: version 4's, plus the delta of version 5.
    apply(ctx, worker, FACTS[3:4])
    assert snapshot_versions(ctx) == [4]
    again = ctx.host_replica()
    assert again.editor.missing_deltas() and len(again.editor.batch_ids) == 3
    full = full_replica(ctx)
    assert (again.version, again.weights_hash) == head_hash(ctx) == (full.version, full.weights_hash)
    assert same_bits(again, full)


def test_a_snapshot_invalidated_by_a_revert_is_never_used(rig):
    """Even if it was not deleted (a worker died between the revert's commit and its housekeeping)."""
    ctx, worker = rig
    ids = apply(ctx, worker, FACTS[:2])
    assert snapshot_versions(ctx) == [2]
    with ctx.sessions() as s:
        old = s.scalar(select(WeightSnapshot))
        kept = dict(version=old.version, batch_ids=list(old.batch_ids), sha256=old.sha256, data=old.data)
    worker.config = worker.config.model_copy(update={"snapshot_every": 0})
    edit_service.request_revert(ctx.sessions, ctx.queue, ids[0])
    assert worker.step().version == 3
    assert snapshot_versions(ctx) == []
    with transaction(ctx.sessions) as s:  # as a worker that died before its housekeeping leaves it
        s.add(WeightSnapshot(**kept))
    replica = ctx.host_replica()
    assert replica.editor.missing_deltas() == []
    assert (replica.version, replica.weights_hash) == head_hash(ctx)


def test_corrupt_snapshot_is_refused_and_replay_falls_back(rig, caplog):
    ctx, worker = rig
    apply(ctx, worker, FACTS[:3])
    with transaction(ctx.sessions) as s:
        snap = s.scalar(select(WeightSnapshot))
        data = bytearray(snap.data)
        # One flipped mantissa bit among the bytes stored as they are (the top bytes are zlib's: a flip
        # there would not decompress): still a snapshot that loads, of other weights.
        data[len(data) // 3] ^= 0x01
        snap.data = bytes(data)
    with caplog.at_level(logging.ERROR, logger="app.service.host"):
        replica = ctx.host_replica()
    assert "weight snapshot of version 2 is corrupt" in caplog.text
    assert replica.editor.missing_deltas() == []  # a full replay
    assert (replica.version, replica.weights_hash) == head_hash(ctx)

    # Bytes that agree with their stored sha256 but not with the version's weights hash (written
    # wrongly, or tampered with): refused by the weights hash after loading.
    import hashlib

    with transaction(ctx.sessions) as s:
        s.execute(update(WeightSnapshot).values(sha256=hashlib.sha256(bytes(data)).hexdigest()))
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="app.service.host"):
        replica = ctx.host_replica()
    assert "weight snapshot of version 2 hashes to" in caplog.text
    assert replica.editor.missing_deltas() == []
    assert (replica.version, replica.weights_hash) == head_hash(ctx)


def test_snapshots_off(make_config):
    ctx = ServiceContext.open(make_config(batch_size=1, snapshot_every=0), queue=LocalQueue())
    worker = ctx.build_worker()
    assert worker.lock.try_acquire()
    try:
        apply(ctx, worker, FACTS[:2])
        assert snapshot_versions(ctx) == []
    finally:
        worker.lock.release()
        ctx.close()


def test_snapshot_on_postgres(make_config, pg_url):
    ctx = ServiceContext.open(
        make_config(batch_size=1, snapshot_every=2).model_copy(update={"database_url": pg_url}), queue=LocalQueue()
    )
    worker = ctx.build_worker()
    assert worker.lock.try_acquire()
    try:
        apply(ctx, worker, FACTS[:3])
        assert snapshot_versions(ctx) == [2]
        replica = ctx.host_replica()
        assert replica.editor.missing_deltas()
        assert (replica.version, replica.weights_hash) == head_hash(ctx)
    finally:
        worker.lock.release()
        ctx.close()


def test_a_snapshot_of_other_shapes_is_refused_before_touching_the_weights(rig, caplog):
    import hashlib

    from app.store.codec import weights_from_bytes, weights_to_bytes

    ctx, worker = rig
    apply(ctx, worker, FACTS[:3])
    with transaction(ctx.sessions) as s:
        snap = s.scalar(select(WeightSnapshot))
        w = weights_from_bytes(snap.data)
        last = max(w)  # the last edited layer: the layers before it would be copied first if not checked first
        w[last] = w[last][:, :-1].contiguous()  # one column short (another model's snapshot)
        snap.data = weights_to_bytes(w)
        snap.sha256 = hashlib.sha256(snap.data).hexdigest()
    with caplog.at_level(logging.ERROR, logger="app.service.host"):
        replica = ctx.host_replica()
    assert "weight snapshot of version 2 cannot be loaded" in caplog.text
    assert replica.editor.missing_deltas() == []
    assert (replica.version, replica.weights_hash) == head_hash(ctx)


def test_export_of_deltas_from_a_replica_that_started_from_a_snapshot(rig, tmp_path):
    """The factors of the batches inside the snapshot were never loaded: export loads them first."""
    from safetensors import safe_open

    from app.service.export import export_deltas

    ctx, worker = rig
    apply(ctx, worker, FACTS[:3])
    replica = ctx.host_replica()
    assert len(replica.editor.missing_deltas()) == 2
    info = export_deltas(replica, tmp_path / "deltas.safetensors")
    assert info["batches"] == replica.editor.batch_ids and len(info["batches"]) == 3
    with safe_open(str(tmp_path / "deltas.safetensors"), "pt") as f:
        names = set(f.keys())
    assert all(f"batch{b}.layer{layer}.u" in names for b in info["batches"] for layer in replica.layers)


def test_revert_rebuilds_from_the_newest_snapshot_before_the_batch(rig, caplog):
    """Four versions, snapshots of 2 and 4: a revert of the 4th edit starts from version 2's snapshot
    (version 4's holds the batch) and gets the bits of a replay from W₀ of the log without it."""
    ctx, worker = rig
    ids = apply(ctx, worker, FACTS[:4])
    assert snapshot_versions(ctx) == [4, 2]
    replica = ctx.host_replica()  # from version 4's snapshot: follows the revert by a rebuild too
    edit_service.request_revert(ctx.sessions, ctx.queue, ids[3])
    with caplog.at_level(logging.INFO, logger="app.service.host"):
        assert worker.step().applied == [ids[3]]
    assert "rebuilt from the snapshot holding 2 batches" in caplog.text
    full = full_replica(ctx)
    assert (worker.host.version, worker.host.weights_hash) == head_hash(ctx) == (full.version, full.weights_hash)
    assert same_bits(worker.host, full)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="app.service.host"):
        replica.sync()
    assert "rebuilt from the snapshot holding 2 batches" in caplog.text
    assert (replica.version, replica.weights_hash) == head_hash(ctx)
    assert same_bits(replica, full)
    # Σ K Kᵀ lost the batch's keys: what a worker replaying the log from W₀ sums, up to float64 rounding.
    ctx2 = ServiceContext.open(ctx.config.model_copy(update={"snapshot_every": 0}), queue=LocalQueue())
    try:
        other = ctx2.build_worker()
        for layer, p in worker.host.editor.preserved.items():
            assert torch.allclose(other.host.editor.preserved[layer], p, rtol=1e-9, atol=1e-9 * float(p.abs().max()))
    finally:
        ctx2.close()


def test_revert_never_rebuilds_from_a_corrupt_or_stale_snapshot(rig, caplog):
    ctx, worker = rig
    ids = apply(ctx, worker, FACTS[:4])
    assert snapshot_versions(ctx) == [4, 2]
    with transaction(ctx.sessions) as s:  # version 2's snapshot: one flipped byte
        snap = s.get(WeightSnapshot, 2)
        data = bytearray(snap.data)
        data[-5] ^= 0xFF
        snap.data = bytes(data)
    edit_service.request_revert(ctx.sessions, ctx.queue, ids[3])
    with caplog.at_level(logging.INFO, logger="app.service.host"):
        assert worker.step().applied == [ids[3]]
    assert "weight snapshot of version 2 is corrupt" in caplog.text
    assert "rebuilt from the snapshot" not in caplog.text
    full = full_replica(ctx)
    assert (worker.host.version, worker.host.weights_hash) == head_hash(ctx) == (full.version, full.weights_hash)
    assert same_bits(worker.host, full)

    # Stale: the revert of the first edit leaves every snapshot holding its batch; one kept back in
    # the log (as a worker that died before its clean-up leaves it) is skipped by the next revert.
    worker.config = worker.config.model_copy(update={"snapshot_every": 0})
    with ctx.sessions() as s:
        first = repo.snapshots(s)[0]  # the newest: its bytes are sound, its batches will not be live
        kept = dict(version=first.version, batch_ids=list(first.batch_ids), sha256=first.sha256)
        kept["data"] = repo.snapshot_data(s, first.version)
    edit_service.request_revert(ctx.sessions, ctx.queue, ids[0])
    assert worker.step().applied == [ids[0]]
    with transaction(ctx.sessions) as s:
        s.merge(WeightSnapshot(**kept))
    caplog.clear()
    edit_service.request_revert(ctx.sessions, ctx.queue, ids[2])
    with caplog.at_level(logging.INFO, logger="app.service.host"):
        assert worker.step().applied == [ids[2]]
    assert "rebuilt from the snapshot" not in caplog.text
    full = full_replica(ctx)
    assert (worker.host.version, worker.host.weights_hash) == head_hash(ctx) == (full.version, full.weights_hash)
    assert same_bits(worker.host, full)

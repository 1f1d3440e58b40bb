"""16-bit factors in the log: the worker applies the factors rounded to KEDIT_FACTOR_DTYPE and the
log stores exactly those, so a replay from W₀ reaches the stored hash; a log whose older rows are
float32 (written before, or with KEDIT_FACTOR_DTYPE=float32) replays with its newer 16-bit rows."""

from __future__ import annotations

import pytest
import torch
from sqlalchemy import select

from app.queue import LocalQueue
from app.service import edits as edit_service
from app.service.context import ServiceContext
from app.store import repo
from app.store.codec import delta_from_bytes
from app.store.models import LayerDeltaRow
from tests.utils.service import FACTS


def _row_dtypes(ctx) -> list[torch.dtype]:
    with ctx.sessions() as s:
        rows = s.scalars(select(LayerDeltaRow).order_by(LayerDeltaRow.batch_id, LayerDeltaRow.layer)).all()
        return [delta_from_bytes(r.layer, r.data).u.dtype for r in rows]


def _edit(ctx, facts, revert: int | None = None) -> None:
    """Apply `facts` with one worker (the only one of this context: it owns the metrics), then revert one."""
    worker = ctx.build_worker()
    assert worker.lock.try_acquire()
    try:
        edit_service.submit(ctx.sessions, ctx.queue, facts)
        applied: list[int] = []
        for _ in facts:
            if len(applied) < len(facts):
                applied += worker.step().applied
        assert len(applied) == len(facts)
        if revert is not None:
            edit_service.request_revert(ctx.sessions, ctx.queue, revert)
            assert worker.step().applied == [revert]
    finally:
        worker.lock.release()


def _replays_to_head(ctx) -> None:
    full = ctx.host_replica(use_snapshots=False)  # raises ReplayMismatch on any other bits
    with ctx.sessions() as s:
        head = repo.head_version(s)
    assert (full.version, full.weights_hash) == (head.id, head.weights_hash)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_factors_replay_to_the_stored_hash(make_config, dtype):
    ctx = ServiceContext.open(make_config(batch_size=2, factor_dtype=dtype, snapshot_every=0), queue=LocalQueue())
    try:
        _edit(ctx, FACTS[:4])
        assert set(_row_dtypes(ctx)) == {getattr(torch, dtype)}
        _replays_to_head(ctx)
    finally:
        ctx.close()


def test_old_float32_rows_replay_beside_16_bit_ones(make_config):
    cfg = make_config(batch_size=1, factor_dtype="float32", snapshot_every=0)
    ctx = ServiceContext.open(cfg, queue=LocalQueue())
    try:
        _edit(ctx, FACTS[:2])
    finally:
        ctx.close()
    ctx = ServiceContext.open(cfg.model_copy(update={"factor_dtype": "bfloat16"}), queue=LocalQueue())
    try:
        with ctx.sessions() as s:
            first = min(e.id for e in repo.list_edits(s, "applied", 10, 0)[0])
        # Two 16-bit batches on top, then a revert of the first float32 one: the rebuild adds both
        # kinds of rows, and the hash is proven again.
        _edit(ctx, FACTS[2:4], revert=first)
        dtypes = _row_dtypes(ctx)
        assert dtypes[0] == torch.float32 and dtypes[-1] == torch.bfloat16
        _replays_to_head(ctx)
    finally:
        ctx.close()

"""The edit log: model info, versions, batches, layer deltas, edits, norm snapshots, idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "model_info",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("base_hash", sa.String(64), nullable=False),
        sa.Column("layers", sa.JSON(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("templates", sa.JSON(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("added_batch_id", sa.Integer(), nullable=True),
        sa.Column("removed_batch_id", sa.Integer(), nullable=True),
        sa.Column("edit_id", sa.Integer(), nullable=True),
        sa.Column("weights_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("created_version", sa.Integer(), sa.ForeignKey("versions.id"), nullable=False),
        sa.Column("removed_version", sa.Integer(), sa.ForeignKey("versions.id"), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source_batch_id", sa.Integer(), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("z_seconds", sa.Float(), nullable=False),
        sa.Column("solve_seconds", sa.Float(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_batches_created_version", "batches", ["created_version"])
    op.create_table(
        "layer_deltas",
        sa.Column("batch_id", sa.Integer(), sa.ForeignKey("batches.id"), primary_key=True),
        sa.Column("layer", sa.Integer(), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "edits",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("target_new", sa.Text(), nullable=False),
        sa.Column("target_true", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("batch_id", sa.Integer(), sa.ForeignKey("batches.id"), nullable=True),
        sa.Column("applied_version", sa.Integer(), nullable=True),
        sa.Column("reverted_version", sa.Integer(), nullable=True),
        sa.Column("revert_requested", sa.Boolean(), nullable=False),
        sa.Column("z_star", sa.LargeBinary(), nullable=True),
        sa.Column("mpes_steps", sa.Integer(), nullable=True),
        sa.Column("prob_before", sa.Float(), nullable=True),
        sa.Column("prob_after", sa.Float(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_edits_status_id", "edits", ["status", "id"])
    op.create_table(
        "norm_snapshots",
        sa.Column("version", sa.Integer(), sa.ForeignKey("versions.id"), primary_key=True),
        sa.Column("layer", sa.Integer(), primary_key=True),
        sa.Column("weight_norm", sa.Float(), nullable=False),
        sa.Column("base_norm", sa.Float(), nullable=False),
        sa.Column("delta_norm", sa.Float(), nullable=False),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("edit_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )


def downgrade() -> None:
    for table in ("idempotency_keys", "norm_snapshots", "edits", "layer_deltas", "batches", "versions", "model_info"):
        op.drop_table(table)

"""Canaries (fixed probes of the model's health), their scores per version, the guard's word per edit.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("edits", sa.Column("guard", sa.Text(), nullable=True))
    op.create_table(
        "canaries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("expected", sa.Text(), nullable=True),
        sa.Column("token_id", sa.Integer(), nullable=True),
        sa.Column("relation", sa.String(64), nullable=True),
    )
    op.create_table(
        "quality_scores",
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("live_edits", sa.Integer(), nullable=False),
        sa.Column("facts_total", sa.Integer(), nullable=False),
        sa.Column("facts_kept", sa.Integer(), nullable=False),
        sa.Column("lost", sa.JSON(), nullable=False),
        sa.Column("perplexity", sa.Float(), nullable=False),
        sa.Column("entropy", sa.Float(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("guard", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("quality_scores")
    op.drop_table("canaries")
    op.drop_column("edits", "guard")

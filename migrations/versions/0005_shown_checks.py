"""What a user reads: per edit, an optional natural question, and the shown / not-shown check of the
greedy answers to its prompt and question (app/service/shown.py).

Revision ID: 0005_shown
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_shown"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = (
    ("question", sa.Text()),
    ("shown", sa.Boolean()),
    ("answer", sa.Text()),
    ("question_shown", sa.Boolean()),
    ("question_answer", sa.Text()),
    ("question_problem", sa.Text()),
    ("checked_version", sa.Integer()),
    ("checked_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    # Plain ADD COLUMNs (nullable, no default): SQLite does them in place, without copying the table.
    for name, kind in COLUMNS:
        op.add_column("edits", sa.Column(name, kind, nullable=True))
    op.create_index("ix_edits_shown_id", "edits", ["shown", "id"])


def downgrade() -> None:
    op.drop_index("ix_edits_shown_id", table_name="edits")
    with op.batch_alter_table("edits") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)

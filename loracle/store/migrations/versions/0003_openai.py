"""OpenAI's fine-tuning fields: each job's suffix, metadata and method as submitted, the
tokens it trained on, its result files and a pause asked for; a deleted file's time of
deletion (its row stays, for the jobs that name it).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("suffix", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("pause_requested_at", sa.DateTime(timezone=True), nullable=True))
        # Jobs from before these fields had no metadata and ran the supervised method.
        batch.add_column(sa.Column("meta", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("method", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("trained_tokens", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("result_files", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("result_files")
        batch.drop_column("trained_tokens")
        batch.drop_column("method")
        batch.drop_column("meta")
        batch.drop_column("suffix")
        batch.drop_column("pause_requested_at")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("deleted_at")

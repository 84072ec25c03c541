"""Fleet: the workers table (each worker's cards and heartbeat), and each job's resources,
placement and queue.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("card_class", sa.String(length=128), nullable=False),
        sa.Column("cards", sa.JSON(), nullable=False),
        sa.Column("device", sa.String(length=16), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=False),
        sa.Column("heartbeat_at", UTC_DATETIME, nullable=False),
        sa.Column("expires_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index(op.f("ix_workers_id"), "workers", ["id"], unique=True)
    op.create_index(op.f("ix_workers_card_class"), "workers", ["card_class"], unique=False)
    op.create_index(op.f("ix_workers_expires_at"), "workers", ["expires_at"], unique=False)
    with op.batch_alter_table("jobs") as batch:
        # Jobs from before placement asked for one card and ran from the default queue.
        batch.add_column(sa.Column("resources", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("placement", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("queue", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("queue")
        batch.drop_column("placement")
        batch.drop_column("resources")
    op.drop_index(op.f("ix_workers_expires_at"), table_name="workers")
    op.drop_index(op.f("ix_workers_card_class"), table_name="workers")
    op.drop_index(op.f("ix_workers_id"), table_name="workers")
    op.drop_table("workers")

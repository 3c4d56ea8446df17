"""Job leases: the worker running a job and until when its claim holds

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 00:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import pacs_node.db.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=128), nullable=True))
        batch.add_column(
            sa.Column(
                "lease_expires_at",
                pacs_node.db.models.UTCDateTime(timezone=True),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")

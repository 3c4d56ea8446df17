"""When a job waiting for a retry may run again (kept in the database, not the broker)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 00:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import pacs_node.db.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column(
                "next_attempt_at", pacs_node.db.models.UTCDateTime(timezone=True), nullable=True
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("next_attempt_at")

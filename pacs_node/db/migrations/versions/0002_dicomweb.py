"""study attributes for QIDO-RS; completion declared by the sender (STOW-RS)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 19:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import pacs_node.db.models

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SERIES_COLUMNS = (
    ("patient_id", 64),
    ("patient_name", 324),
    ("study_date", 8),
    ("accession_number", 16),
    ("study_description", 64),
)


def upgrade() -> None:
    with op.batch_alter_table("series") as batch:
        for name, length in _SERIES_COLUMNS:
            batch.add_column(sa.Column(name, sa.String(length=length), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column(
                "complete_requested_at",
                pacs_node.db.models.UTCDateTime(timezone=True),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("complete_requested_at")
    with op.batch_alter_table("series") as batch:
        for name, _ in reversed(_SERIES_COLUMNS):
            batch.drop_column(name)

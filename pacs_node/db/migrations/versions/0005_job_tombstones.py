"""Tombstones of deleted jobs, with their audit trail

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 00:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import pacs_node.db.models

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_tombstones",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("preset", sa.String(length=64), nullable=True),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("output_series_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("created_at", pacs_node.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", pacs_node.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", pacs_node.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deleted_by", sa.String(length=64), nullable=False),
        sa.Column("events", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_job_tombstones_job_id", "job_tombstones", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_job_tombstones_job_id", table_name="job_tombstones")
    op.drop_table("job_tombstones")

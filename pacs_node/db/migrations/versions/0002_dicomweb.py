"""routing and DICOMweb: rule, strength and destination list per job; study attributes
for QIDO-RS; completion declared by the sender (STOW-RS)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 19:15:00
"""

import json
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
        batch.add_column(sa.Column("rule", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("strength", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("destinations", sa.Text(), nullable=False, server_default="[]"))
        batch.add_column(
            sa.Column("forward_skipped", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.alter_column("preset", existing_type=sa.String(length=64), nullable=True)
    # The single "AET@host:port" destination becomes a one-element destination list.
    jobs = sa.table("jobs", sa.column("id"), sa.column("destination"), sa.column("destinations"))
    connection = op.get_bind()
    for job_id, destination in connection.execute(
        sa.select(jobs.c.id, jobs.c.destination).where(jobs.c.destination.is_not(None))
    ):
        aet, _, address = destination.partition("@")
        host, _, port = address.rpartition(":")
        value = json.dumps([{"kind": "dicom", "ae_title": aet, "host": host, "port": int(port)}])
        connection.execute(jobs.update().where(jobs.c.id == job_id).values(destinations=value))
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("destination")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("destination", sa.String(length=256), nullable=True))
    jobs = sa.table("jobs", sa.column("id"), sa.column("destination"), sa.column("destinations"))
    connection = op.get_bind()
    for job_id, destinations in connection.execute(sa.select(jobs.c.id, jobs.c.destinations)):
        first = next((d for d in json.loads(destinations) if d.get("kind") == "dicom"), None)
        if first is not None:
            value = f"{first['ae_title']}@{first['host']}:{first['port']}"
            connection.execute(jobs.update().where(jobs.c.id == job_id).values(destination=value))
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("forward_skipped")
        batch.drop_column("destinations")
        batch.drop_column("strength")
        batch.drop_column("rule")
        batch.alter_column("preset", existing_type=sa.String(length=64), nullable=False)
        batch.drop_column("complete_requested_at")
    with op.batch_alter_table("series") as batch:
        for name, _ in reversed(_SERIES_COLUMNS):
            batch.drop_column(name)

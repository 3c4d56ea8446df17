"""A derived instance's own series: a job may send a secondary series (the uncertainty map)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 12:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL: the job's derived series (output_series_instance_uid), as for every older row.
    with op.batch_alter_table("job_outputs") as batch:
        batch.add_column(sa.Column("series_instance_uid", sa.String(length=64), nullable=True))


def downgrade() -> None:
    # A secondary series' instances cannot be told from the main series' without the
    # column: their rows are removed. Their files then belong to no row: `pacs-node audit`
    # lists them as orphans (invariant 5), to be removed by hand.
    op.execute("DELETE FROM job_outputs WHERE series_instance_uid IS NOT NULL")
    with op.batch_alter_table("job_outputs") as batch:
        batch.drop_column("series_instance_uid")

"""The QA gate: its report and the rule's failure policy in the job row (and the HELD state)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 06:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # HELD needs no schema change: job_status is a VARCHAR(16) without a CHECK constraint.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("qa", sa.Text(), nullable=True))
        batch.add_column(sa.Column("qa_verdict", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("qa_policy", sa.String(length=16), nullable=True))
        batch.create_index("ix_jobs_qa_verdict", ["qa_verdict"])


def downgrade() -> None:
    op.execute("UPDATE jobs SET status = 'FAILED' WHERE status = 'HELD'")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_qa_verdict")
        batch.drop_column("qa_policy")
        batch.drop_column("qa_verdict")
        batch.drop_column("qa")

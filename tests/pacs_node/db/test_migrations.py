"""Migrations on both backends: models match the schema, and 0002 keeps old destinations."""

from __future__ import annotations

import json

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from pacs_node.db.migrate import alembic_config
from pacs_node.db.models import Base
from pacs_node.db.session import make_engine


def test_head_schema_matches_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []


def test_0002_turns_the_single_destination_into_a_list_and_back(db_url: str) -> None:
    config = alembic_config(db_url)
    command.downgrade(config, "0001")
    engine = make_engine(db_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO series (id, study_instance_uid, series_instance_uid, created_at) "
                "VALUES (1, '1.2', '1.2.3', CURRENT_TIMESTAMP)"
            )
        )
        for job_id, destination in ((1, "PACS@10.0.0.5:104"), (2, None)):
            connection.execute(text(
                "INSERT INTO jobs (id, series_id, status, preset, destination, instance_count, "
                "attempts, created_at, updated_at, last_instance_at) VALUES (:id, 1, 'DONE', "
                "'ct-denoise', :d, 1, 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP)"), {"id": job_id, "d": destination})  # fmt: skip
    command.upgrade(config, "head")
    with engine.connect() as connection:
        rows = dict(connection.execute(text("SELECT id, destinations FROM jobs")).all())
    assert json.loads(rows[1]) == [
        {"kind": "dicom", "ae_title": "PACS", "host": "10.0.0.5", "port": 104}
    ]
    assert json.loads(rows[2]) == []
    command.downgrade(config, "0001")
    with engine.connect() as connection:
        back = dict(connection.execute(text("SELECT id, destination FROM jobs")).all())
    assert back == {1: "PACS@10.0.0.5:104", 2: None}
    command.upgrade(config, "head")
    engine.dispose()

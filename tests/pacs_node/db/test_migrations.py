"""Migrations on both backends: models match the schema, 0002 keeps old destinations,
0008 keeps the derived series' outputs."""

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


def test_0008_keeps_the_derived_series_outputs_and_drops_secondary_ones(db_url: str) -> None:
    config = alembic_config(db_url)
    command.upgrade(config, "head")
    engine = make_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO series (id, study_instance_uid, series_instance_uid, created_at) "
            "VALUES (1, '1.2', '1.2.3', CURRENT_TIMESTAMP)"))  # fmt: skip
        connection.execute(text(
            "INSERT INTO jobs (id, series_id, status, preset, destinations, instance_count, "
            "attempts, created_at, updated_at, last_instance_at, output_series_instance_uid) "
            "VALUES (1, 1, 'DONE', 'ct-diffusion', '[]', 1, 1, CURRENT_TIMESTAMP, "
            "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, '1.2.9')"))  # fmt: skip
        for sop, series in (("1.2.9.1", None), ("1.2.8.1", "1.2.8")):
            connection.execute(text(
                "INSERT INTO job_outputs (job_id, sop_instance_uid, source_sop_instance_uid, "
                "path, series_instance_uid) VALUES (1, :sop, '1.2.3.1', '/x', :series)"),
                {"sop": sop, "series": series})  # fmt: skip
    command.downgrade(config, "0007")
    with engine.connect() as connection:
        kept = connection.execute(text("SELECT sop_instance_uid FROM job_outputs")).all()
    assert [row[0] for row in kept] == ["1.2.9.1"]
    command.upgrade(config, "head")
    with engine.connect() as connection:
        back = connection.execute(
            text("SELECT sop_instance_uid, series_instance_uid FROM job_outputs")
        ).all()
    assert [tuple(row) for row in back] == [("1.2.9.1", None)]
    engine.dispose()

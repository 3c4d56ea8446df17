"""Fresh PostgreSQL databases on the test server (the production-mode job database), for
tests and benchmarks."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

# CI (`make test`) starts the server on this address.
POSTGRES_ADMIN_DSN = os.environ.get(
    "PACS_NODE_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test"
)


@contextmanager
def postgres_database(prefix: str = "pacs_node_test") -> Iterator[str]:
    """A new, empty database's SQLAlchemy URL; the database is dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = psycopg.conninfo.conninfo_to_dict(POSTGRES_ADMIN_DSN)
    user = params.get("user", "postgres")
    try:
        yield f"postgresql+psycopg://{user}@{params.get('host')}:{params.get('port')}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

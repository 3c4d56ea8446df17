"""Engine and session factory for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

READ_ONLY = "read_only"  # execution option: this connection only reads (SQLite: deferred BEGIN)


def make_engine(url: str) -> Engine:
    """Create an engine tuned for the node's access pattern.

    SQLite: WAL journal so readers never block the receiver, ``synchronous=FULL``
    because an instance is acknowledged to the sender only after its row is
    committed, a busy timeout so short write bursts queue instead of failing, and
    ``BEGIN IMMEDIATE`` so a transaction takes the write lock up front (a deferred
    transaction that upgrades to writing fails at once with "database is locked"), except
    on connections with the execution option ``read_only``, which only read.

    Both: ``hide_parameters``, so a database error (logged, or kept as a job's reason)
    never carries the statement's values, which include patient names and IDs.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, future=True, hide_parameters=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, future=True, hide_parameters=True,
        connect_args={"check_same_thread": False, "timeout": 30},
    )  # fmt: skip

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's "begin" event start it
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A read-only connection (execution option ``read_only``) takes no write lock, so
        # it never waits behind another association's commit and fsync.
        deferred = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (views are built from them)."""
    return sessionmaker(bind=engine, expire_on_commit=False, future=True)

"""Shared fixtures: real SQLite and PostgreSQL databases, a migrated repository."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from pacs_node.db.migrate import upgrade
from pacs_node.db.repository import JobRepository
from pacs_node.db.session import make_engine, make_session_factory
from tests.helpers.postgres import POSTGRES_ADMIN_DSN, postgres_database

# The production-mode services; CI (`make test`) starts them on these addresses.
REDIS_URL = os.environ.get("PACS_NODE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _postgres_reachable() -> bool:
    try:
        with psycopg.connect(POSTGRES_ADMIN_DSN, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def postgres_available() -> bool:
    return _postgres_reachable()


@pytest.fixture()
def postgres_url(postgres_available: bool) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    if not postgres_available:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_DSN!r} (make test starts it)")
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated, empty job database of each supported backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'jobs.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    return url


@pytest.fixture()
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture()
def repository(engine: Engine) -> JobRepository:
    return JobRepository(make_session_factory(engine))


@pytest.fixture()
def redis_url() -> Iterator[str]:
    """The test Redis (the production-mode broker), or a skip when it is not running."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"Redis not reachable at {REDIS_URL} (make test starts it)")
    yield REDIS_URL
    client.close()


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def transfer_syntax_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real CT slice in 16 transfer syntaxes and more (../shared/data, extracted once)."""
    archive = SHARED_DATA / "ct_transfer_syntaxes.tar.xz"
    if not archive.is_file():
        pytest.skip(f"shared data not found: {archive}")
    target = tmp_path_factory.mktemp("transfer-syntaxes")
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target / "ct_transfer_syntaxes"

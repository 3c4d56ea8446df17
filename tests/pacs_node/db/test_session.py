"""The SQLite engine: writers take the lock up front, read-only connections never wait."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import text

from pacs_node.db.session import READ_ONLY, make_engine


def test_a_read_only_connection_does_not_wait_for_a_writer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    engine = make_engine(url)
    with engine.begin() as setup:
        setup.execute(text("CREATE TABLE t (v INTEGER)"))
        setup.execute(text("INSERT INTO t VALUES (1)"))
    other = make_engine(url)
    counted: list[int] = []

    def plain_read() -> None:  # a connection without the option begins IMMEDIATE
        with other.connect() as connection:
            counted.append(int(connection.scalar(text("SELECT count(*) FROM t")) or 0))

    with engine.begin() as writer:  # holds the write lock until the block ends
        writer.execute(text("INSERT INTO t VALUES (2)"))
        started = time.monotonic()
        with other.connect().execution_options(**{READ_ONLY: True}) as reader:
            # WAL: the reader sees the last commit, without the writer's row, at once.
            assert reader.scalar(text("SELECT count(*) FROM t")) == 1
        assert time.monotonic() - started < 1.0
        waiting = threading.Thread(target=plain_read)
        waiting.start()
        time.sleep(0.5)
        assert counted == []  # still waiting for the writer's lock
    waiting.join(timeout=10)
    assert counted == [2]

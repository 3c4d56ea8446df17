"""Everything a worker process needs, built once from the settings."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from sqlalchemy import Engine

from pacs_node.db.repository import JobRepository
from pacs_node.db.session import make_engine, make_session_factory
from pacs_node.enhancers import EnhancerCache
from pacs_node.settings import Settings
from pacs_node.storage import InstanceStore


@dataclass(frozen=True)
class WorkerContext:
    """Settings plus the database and file store they point at."""

    settings: Settings
    engine: Engine
    repository: JobRepository
    store: InstanceStore
    enhancers: EnhancerCache
    # Who ran a job, for the audit trail: host and process of this worker.
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerContext:
        """Connect to the configured database and data directory."""
        engine = make_engine(settings.db_url)
        return cls(
            settings=settings,
            engine=engine,
            repository=JobRepository(make_session_factory(engine)),
            store=InstanceStore(settings.data_dir),
            enhancers=EnhancerCache(settings),
        )

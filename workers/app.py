"""The Celery application: ``celery -A workers.app worker`` (an entry point)."""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import setup_logging

from pacs_node.settings import Settings, load_settings


def create_app(settings: Settings) -> Celery:
    """A Celery app consuming the node's queue on the configured broker.

    Acknowledge late and reject on a lost worker so a crash redelivers the task; one
    task at a time per process because a job holds a whole volume in memory. Results
    live in the job database, so Celery keeps none.
    """
    app = Celery("workers", broker=settings.celery_broker_url, include=["workers.tasks"])
    app.conf.update(
        task_default_queue=settings.worker.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_concurrency=settings.worker.concurrency,
        worker_pool=settings.worker.pool,
    )
    return app


@setup_logging.connect
def _configure_logging(**_kwargs: object) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s",
    )


settings = load_settings()
app = create_app(settings)

"""Hand jobs to the Celery broker by task name (the node never imports the workers)."""

from __future__ import annotations

import logging

from celery import Celery

from pacs_node.errors import DispatchError

logger = logging.getLogger(__name__)

ENHANCE_TASK = "workers.enhance_series"
FORWARD_TASK = "workers.forward_series"


class Dispatcher:
    """A Celery client bound to the broker and queue the workers consume."""

    def __init__(self, broker_url: str, queue: str) -> None:
        self._queue = queue
        self._app = Celery("pacs_node", broker=broker_url, set_as_current=False)
        self._app.conf.update(
            task_ignore_result=True,
            broker_connection_retry_on_startup=True,
            task_publish_retry=True,
            task_publish_retry_policy={"max_retries": 2, "interval_start": 0.5},
        )

    def enqueue(self, job_id: int, task: str = ENHANCE_TASK) -> None:
        """Publish ``task`` (enhancement by default, or FORWARD_TASK) for ``job_id``.

        Raises
        ------
        DispatchError
            When the broker cannot be reached; the job stays QUEUED and undispatched,
            and the completion monitor tries again on its next round.
        """
        try:
            self._app.send_task(task, args=[job_id], queue=self._queue)
        except Exception as exc:  # kombu raises many transport-specific errors
            raise DispatchError(f"cannot publish job {job_id} to the broker: {exc}") from exc
        logger.info("job %d published to queue %s", job_id, self._queue)

    def ping(self) -> None:
        """Connect to the broker once (raises when it cannot be reached)."""
        with self._app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)

    def close(self) -> None:
        """Release the broker connections."""
        self._app.close()

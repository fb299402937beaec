"""Publish a task only after the transaction that wrote its row commits, and never hang on a dead broker."""

import logging
from collections.abc import Callable, Sequence
from typing import Any

from celery import Task
from django.db import transaction

logger = logging.getLogger(__name__)

#: A web request must not wait on a broker that is down: one quick retry, then give
#: up and leave the row for the outbox relay, which republishes it later.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1}


def publish(task: Task, *, args: Sequence[Any], queue: str) -> bool:
    """Send one message now; False (logged) when the broker cannot take it."""
    try:
        task.apply_async(args=list(args), queue=queue, retry=True, retry_policy=PUBLISH_RETRY_POLICY)
    except Exception:  # any broker failure: the row stays the record, the relay retries
        logger.warning("publish of %s to %s failed; left for the relay", task.name, queue, exc_info=True)
        return False
    return True


def publish_after_commit(
    task: Task,
    *,
    args: Sequence[Any],
    queue: str,
    on_published: Callable[[], None] | None = None,
) -> None:
    """Publish once the current transaction commits (at once outside a transaction)."""

    def _publish() -> None:
        if publish(task, args=args, queue=queue) and on_published is not None:
            on_published()

    transaction.on_commit(_publish, robust=True)

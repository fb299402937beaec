"""Publish a task only after the transaction that wrote its row commits, and never let a broker hold the caller.

A row written in PostgreSQL is the record; the message is a wake-up call.  A publish
that fails or never finishes loses nothing: the relay publishes the row again.  Tasks are
published by name, so a service never imports the module that defines its task.
"""

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery, current_app
from django.db import close_old_connections, connection, transaction

from jobs.redis import PUBLISHED_AT_HEADER

logger = logging.getLogger(__name__)

#: A caller must not wait on a broker that is down: one quick retry, then give up and
#: leave the row for the outbox relay.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1}
#: Threads that publish for web requests.  A broker that accepts connections but never
#: answers (frozen, half-open) blocks a publish for the socket timeout; it blocks one of
#: these threads, never a request.
BACKGROUND_THREADS = 4
#: Above this many publishes waiting, new ones are left to the relay instead of memory.
MAX_WAITING = 10_000

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_executor_pid: int | None = None
_waiting = 0


def publish(
    task_name: str, *, args: Sequence[Any], queue: str, kwargs: dict[str, Any] | None = None, app: Celery | None = None
) -> bool:
    """Send one message for the task named `task_name` now (through `app`, by default the current one); False
    (logged) when the broker cannot take it."""
    try:
        # A signature runs a task registered in this process as the task itself (eager mode included),
        # and sends any other by name.
        (app or current_app).signature(task_name).apply_async(
            args=list(args),
            kwargs=kwargs or {},
            queue=queue,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
            # Read back by the metrics (age of the oldest message per queue).
            headers={PUBLISHED_AT_HEADER: time.time()},
        )
    except Exception as exc:  # any broker failure: the row stays the record, the relay retries
        logger.warning(
            "publish of %s to %s failed (%s: %s); left for the relay", task_name, queue, type(exc).__name__, exc
        )
        return False
    return True


def publish_after_commit(
    task_name: str,
    *,
    args: Sequence[Any],
    queue: str,
    kwargs: dict[str, Any] | None = None,
    on_published: Callable[[], None] | None = None,
    background: bool = False,
    app: Celery | None = None,
) -> None:
    """Publish once the current transaction commits (at once outside a transaction).

    With `background`, the publish runs on a small thread pool and the caller returns
    at once: what web requests use.
    """

    def _publish() -> None:
        if publish(task_name, args=args, kwargs=kwargs, queue=queue, app=app) and on_published is not None:
            on_published()

    if background:
        transaction.on_commit(lambda: _submit(_publish), robust=True)
    else:
        transaction.on_commit(_publish, robust=True)


def waiting_publishes() -> int:
    """Background publishes submitted and not finished (for tests and metrics)."""
    return _waiting


def _submit(function: Callable[[], None]) -> None:
    global _waiting
    with _lock:
        if _waiting >= MAX_WAITING:
            logger.warning("%s publishes waiting on the broker; this one is left for the relay", _waiting)
            return
        _waiting += 1
        executor = _pool()
    executor.submit(_run, function)


def _run(function: Callable[[], None]) -> None:
    global _waiting
    close_old_connections()
    try:
        function()
    except Exception:
        logger.exception("background publish failed; the relay will publish the row")
    finally:
        with _lock:
            _waiting -= 1
            idle = _waiting == 0
        if idle:
            # Under load a thread keeps its connection for the next publish; once idle it
            # gives it back, so quiet web processes hold no extra database sessions.
            connection.close()
        else:
            close_old_connections()


def _pool() -> ThreadPoolExecutor:
    """One pool per process: threads do not survive a fork (gunicorn, prefork)."""
    global _executor, _executor_pid
    if _executor is None or _executor_pid != os.getpid():
        _executor = ThreadPoolExecutor(max_workers=BACKGROUND_THREADS, thread_name_prefix="publish")
        _executor_pid = os.getpid()
    return _executor


def shutdown() -> None:
    """Finish waiting publishes and stop the threads (their database connections go with them)."""
    global _executor
    with _lock:
        executor, _executor = _executor, None
    if executor is not None:
        executor.shutdown(wait=True)

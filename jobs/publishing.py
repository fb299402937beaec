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
from dataclasses import dataclass
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
    on_failed: Callable[[], None] | None = None,
    background: bool = False,
    coalesce: bool = False,
    coalesce_within: float = 0.0,
    app: Celery | None = None,
) -> None:
    """Publish once the current transaction commits (at once outside a transaction).

    With `background`, the publish runs on a small thread pool and the caller returns
    at once: what web requests use.  `on_failed` runs when the message was not published
    (the broker refused it, or too many publishes were waiting): the caller's row can say so.

    `coalesce` (background only; for a task that takes any number of positional arguments, each one
    item, such as ids): publishes of the same task and queue still waiting go out as one message
    with their arguments joined, up to COALESCE_MAX.  A publish after a quiet moment leaves at
    once; after one, the next message of the same task and queue leaves no sooner than
    `coalesce_within` seconds later, with whatever arrived meanwhile (Kafka's linger, paid only
    by a burst): the broker and the workers see one message per group instead of one per call.
    """
    if background:
        request = _Request(task_name, queue, tuple(args), kwargs or {}, on_failed, app, coalesce, coalesce_within)
        transaction.on_commit(lambda: _submit(request), robust=True)
        return

    def _publish() -> None:
        if not publish(task_name, args=args, kwargs=kwargs, queue=queue, app=app) and on_failed is not None:
            on_failed()

    transaction.on_commit(_publish, robust=True)


#: Most publishes joined into one message (see publish_after_commit's `coalesce`).
COALESCE_MAX = 50


@dataclass(frozen=True)
class _Request:
    task_name: str
    queue: str
    args: tuple
    kwargs: dict[str, Any]
    on_failed: Callable[[], None] | None
    app: Celery | None
    coalesce: bool
    coalesce_within: float

    @property
    def group(self) -> tuple | None:
        """Requests that may share a message have the same group; None for one that may not."""
        if not self.coalesce or self.kwargs:
            return None
        return (self.task_name, self.queue, id(self.app), self.coalesce_within)


def waiting_publishes() -> int:
    """Background publishes submitted and not finished (for tests and metrics)."""
    return _waiting


#: Coalescable requests waiting, per group.
_groups: dict[tuple, list[_Request]] = {}
#: Groups with a drain scheduled or running: one at a time per group, so that what arrives while a
#: message is on its way to the broker waits for the next message instead of taking a thread of its own.
_draining: set[tuple] = set()


def _submit(request: _Request) -> None:
    global _waiting
    group = request.group
    with _lock:
        executor = _pool()
        dropped = _waiting >= MAX_WAITING
        if not dropped:
            _waiting += 1
            start_drain = group is not None and group not in _draining
            if group is not None:
                _groups.setdefault(group, []).append(request)
                _draining.add(group)
    if dropped:
        logger.warning("%s publishes waiting on the broker; this one is left for the relay", _waiting)
        _failed([request])
    elif group is None:
        executor.submit(_run, _send, [request])
    elif start_drain:
        executor.submit(_run, _drain, group)


def _drain(group: tuple) -> int:
    """Publish what waits in `group`, COALESCE_MAX requests per message, one message per `coalesce_within`
    seconds at most, until nothing does (each group of requests counted out of waiting_publishes as it
    leaves); 0 left to count."""
    global _waiting
    linger = group[-1]
    while True:
        with _lock:
            requests = _groups.pop(group, [])
            if not requests:
                _draining.discard(group)
                return 0
        for start in range(0, len(requests), COALESCE_MAX):
            chunk = requests[start : start + COALESCE_MAX]
            try:
                _send(chunk)
            finally:
                with _lock:
                    _waiting -= len(chunk)
        if linger > 0:
            time.sleep(linger)


def _send(requests: list[_Request]) -> int:
    """One message for `requests` (one group); the number of requests."""
    first = requests[0]
    args = [arg for request in requests for arg in request.args]
    if not publish(first.task_name, args=args, kwargs=first.kwargs, queue=first.queue, app=first.app):
        _failed(requests)
    return len(requests)


def _failed(requests: list[_Request]) -> None:
    for request in requests:
        if request.on_failed is None:
            continue
        try:
            request.on_failed()
        except Exception:  # the row stays as it was written; the relay's rules still find it
            logger.exception("after a failed publish of %s, its failure handler failed too", request.task_name)


def _run(function: Callable[..., int], *args: Any) -> None:
    """Run a publishing function on a thread; it returns how many publishes it finished that are still
    counted as waiting."""
    global _waiting
    close_old_connections()
    done = 1
    try:
        done = function(*args)
    except Exception:
        logger.exception("background publish failed; the relay will publish the row")
    finally:
        with _lock:
            _waiting -= done
            idle = _waiting == 0
        if idle:
            # Under load a thread keeps its connection for the next publish; once idle it
            # gives it back, so quiet web processes hold no extra database sessions.
            connection.close()
        else:
            close_old_connections()


def _pool() -> ThreadPoolExecutor:
    """One pool per process: threads do not survive a fork (gunicorn, prefork)."""
    global _executor, _executor_pid, _waiting
    if _executor is None or _executor_pid != os.getpid():
        if _executor_pid != os.getpid():
            # What the parent had waiting is the parent's to publish.
            _groups.clear()
            _draining.clear()
            _waiting = 0
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

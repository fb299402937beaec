"""The job runtime's own Redis connection (limiter, breaker, counters), with timeouts stated rather than defaulted,
and what the runtime reads of the broker's queues."""

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

#: Commands here are single round trips; anything slower means Redis is in trouble,
#: and the caller must fail fast rather than hold a worker slot.
SOCKET_TIMEOUT = 2.0
CONNECT_TIMEOUT = 2.0
#: One immediate retry covers a connection dropped while idle; redis-py 8's default
#: (several retries with backoff) would stall every send for seconds while Redis is down.
RETRY = Retry(NoBackoff(), retries=1)
#: Message header set at publish (jobs/publishing.py): the queue age and the relay read it back.
PUBLISHED_AT_HEADER = "published_at"


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_keepalive=True,
        health_check_interval=10,
        retry=RETRY,
    )


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    """One client (with its own connection pool) per process."""
    return _client(settings.REDIS_URL)


@lru_cache(maxsize=1)
def broker_client() -> redis.Redis:
    """A plain client on the Celery broker (it may be another Redis than REDIS_URL), to read queue depths."""
    return _client(settings.CELERY_BROKER_URL)


@dataclass(frozen=True)
class QueueHead:
    """A queue's depth and when its next message (the oldest waiting) was published, epoch seconds."""

    depth: int
    published_at: float | None

    def age(self, now: float) -> float | None:
        """Seconds since the next message was published; None if the queue is empty or the age unknown."""
        return None if self.published_at is None else max(0.0, now - self.published_at)


def queue_head(name: str, *, client: redis.Redis | None = None) -> QueueHead | None:
    """The queue's depth and head, in one round trip; None if the broker cannot be read.

    kombu pushes on the left and workers pop on the right, so the next message is at index -1.
    """
    pipe = (client or broker_client()).pipeline(transaction=False)
    pipe.llen(name)
    pipe.lindex(name, -1)
    try:
        depth, raw = pipe.execute()
    except redis.RedisError:
        return None
    published = None
    if raw is not None:
        try:
            published = float(json.loads(raw)["headers"][PUBLISHED_AT_HEADER])
        except (ValueError, KeyError, TypeError, AttributeError):
            published = None
    return QueueHead(int(depth), published)


def queue_lost_before(head: QueueHead | None, *, now: float, grace: float) -> datetime:
    """A row published to the queue before this moment has no message left in it, unless a busy worker
    holds it (`grace`, longer than a task runs, covers that).

    The queue is FIFO: every message published before its head was taken off it already, so a row
    still waiting for its worker that long was lost (Redis restarted) or its worker died.  Rows
    published after the head are waiting their turn, however long the backlog.  When the head cannot
    be read, only the age counts: `grace` before `now`.
    """
    newest = now if head is None or head.depth == 0 or head.published_at is None else min(now, head.published_at)
    return datetime.fromtimestamp(newest - grace, UTC)

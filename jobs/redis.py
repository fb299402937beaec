"""The job runtime's own Redis connection (limiter, breaker, counters), with timeouts stated rather than defaulted."""

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


def queue_length(name: str) -> int | None:
    """Messages waiting in a Celery queue on the Redis broker (a list named after the queue); None if unknown."""
    try:
        return int(broker_client().llen(name))
    except redis.RedisError:
        return None

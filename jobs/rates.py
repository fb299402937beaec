"""Rolling per-second counters in Redis (sends of a campaign, of a provider): the rate over the last
seconds, shared by every process.  For display and ETAs, never for decisions: if Redis is down they read zero."""

import logging
import time

import redis

from jobs.redis import redis_client

logger = logging.getLogger(__name__)

#: Seconds of history kept; the admin's charts look back at most this far.
HISTORY_SECONDS = 600


class RollingCounter:
    """Counts per wall-clock second under `jobs:rate:<name>:<second>`."""

    def __init__(self, name: str, client: redis.Redis | None = None) -> None:
        self.name = name
        self.client = client or redis_client()

    def _key(self, second: int) -> str:
        return f"jobs:rate:{self.name}:{second}"

    def add(self, count: int = 1, *, at: float | None = None) -> None:
        add_counts([(self, count)], at=at)

    def series(self, seconds: int = 60, *, now: float | None = None) -> list[tuple[int, int]]:
        """(second, count) for the last `seconds` whole seconds, oldest first (the current one excluded)."""
        end = int(now if now is not None else time.time())
        moments = list(range(end - seconds, end))
        try:
            values = self.client.mget([self._key(s) for s in moments])
        except redis.RedisError:
            values = [None] * len(moments)
        return [(s, int(v or 0)) for s, v in zip(moments, values, strict=True)]

    def rate(self, seconds: int = 10, *, now: float | None = None) -> float:
        """Average count per second over the last `seconds` whole seconds."""
        return sum(count for _, count in self.series(seconds, now=now)) / seconds


def add_counts(
    counts: list[tuple[RollingCounter, int]], *, at: float | None = None, pipe: redis.client.Pipeline | None = None
) -> None:
    """Add to several counters (of the same Redis) in one round trip, or in `pipe` (the caller executes it)."""
    if not counts:
        return
    second = int(at if at is not None else time.time())
    try:
        own = pipe is None
        if own:
            pipe = counts[0][0].client.pipeline(transaction=False)
        for counter, count in counts:
            pipe.incrby(counter._key(second), count)
            pipe.expire(counter._key(second), HISTORY_SECONDS)
        if own:
            pipe.execute()
    except redis.RedisError as exc:
        logger.debug("rolling counters %s not updated: %s", [c.name for c, _ in counts], exc)

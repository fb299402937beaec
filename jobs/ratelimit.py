"""Global rate limits per provider, shared by every worker process: GCRA state in Redis, one atomic Lua script.

    T   = 1 / rate                      emission interval (seconds per token)
    tau = burst * T                     how far ahead of `now` the schedule may run
    TAT = theoretical arrival time      the one number stored per key, in Redis µs

    acquire(n):  new = max(TAT, now) + n*T
                 new - now <= tau  ->  TAT = new, granted (wait 0)
                 otherwise         ->  refused, wait = new - tau - now

Time comes from the Redis server's clock, so worker clocks do not matter.  A batch of n
is granted whole or not at all; in any window of W seconds at most rate*W + burst tokens
are granted, so `burst` is also the largest batch and the overshoot of a 1-s window.

A caller limited to a `share` of the rate (a kind its configuration names, e.g. marketing at 0.8) acquires on two keys in
the same script: the provider's key and a second key running at rate*share with a burst
of burst*share.  Both grant or neither does, so such callers never take more than their
share, in a burst or in the long run, and urgent callers (share 1, the provider's key
only) always find the rest free.
`acquire` never sleeps; `acquire_within` sleeps for short waits.  `penalize` (a provider
answered 429) moves TAT so that nobody is granted a token before the penalty has passed;
penalties from many workers overlap instead of adding up.
If Redis is unreachable every request is granted: a broken limiter must not stop delivery.
"""

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from jobs.metrics import RATELIMIT_WAIT_SECONDS, RATELIMIT_WAITS
from jobs.redis import redis_client

logger = logging.getLogger(__name__)

#: Redis server time in microseconds: about 1.8e15, exact in a Lua double (2^53 ≈ 9e15).
_NOW_US = "local t = redis.call('TIME') local now = t[1] * 1000000 + t[2] "

# KEYS: TAT of the provider [, TAT of the share].  ARGV: tokens, then per key: interval µs, tau µs.
# Returns {granted (1|0), wait µs, Redis now µs}.
_ACQUIRE = (
    _NOW_US
    + """
local n = tonumber(ARGV[1])
local news, wait = {}, 0
for i, key in ipairs(KEYS) do
  local interval, tau = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local new_tat = math.max(tonumber(redis.call('GET', key) or '0'), now) + n * interval
  news[i] = new_tat
  wait = math.max(wait, new_tat - now - tau)
end
if wait > 0 then
  return {0, math.ceil(wait), now}
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%.0f', news[i]), 'PX', math.ceil((news[i] - now) / 1000) + 1000)
end
return {1, 0, now}
"""
)

# KEYS: TAT. ARGV: burst window µs, penalty µs. Returns the µs until the next token.
_PENALIZE = (
    _NOW_US
    + """
local tau, penalty = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now + tau + penalty)
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return math.ceil(tat - tau - now)
"""
)


class RateLimiter:
    """The rate limit of one named dependency (a provider account), enforced across all workers."""

    def __init__(
        self,
        name: str,
        rate_per_second: float,
        burst: int | None = None,
        client: redis.Redis | None = None,
        *,
        shares: Mapping[str, float] | None = None,
    ) -> None:
        if rate_per_second <= 0:
            raise ValueError(f"rate limiter {name}: rate_per_second must be positive, not {rate_per_second!r}")
        for kind, share in (shares or {}).items():
            if not 0 < share <= 1:
                raise ValueError(f"rate limiter {name}: the share of {kind!r} must lie in (0, 1], not {share!r}")
        self.name = name
        self.rate_per_second = float(rate_per_second)
        #: Tokens that may be taken at once after an idle spell; one second's worth by default.
        self.burst = burst if burst is not None else max(1, math.ceil(rate_per_second))
        #: Share of the rate a kind of caller may use, by the name its caller gives (the domain's: a priority);
        #: any other kind may use the whole rate (see the module docstring).
        self.shares = dict(shares or {})
        self.client = client or redis_client()
        self.key = f"jobs:ratelimit:{name}"
        self._interval_us = 1_000_000 / self.rate_per_second
        self._tau_us = self.burst * self._interval_us
        self._acquire = self.client.register_script(_ACQUIRE)
        self._penalize = self.client.register_script(_PENALIZE)

    def max_batch(self, share: float = 1.0) -> int:
        """The most tokens one call at this share may ask for."""
        return max(1, int(self.burst * share + 1e-9))

    def share_for(self, kind: str) -> float:
        """The `share` a caller of this kind passes to `acquire`."""
        return self.shares.get(kind, 1.0)

    def acquire(self, n: int = 1, *, share: float = 1.0) -> float:
        """0.0 if n tokens were granted, else the seconds to wait before asking again.  Never blocks."""
        return self.acquire_at(n, share=share)[0]

    def acquire_within(self, n: int = 1, *, share: float = 1.0, max_wait: float) -> float:
        """Like `acquire`, but sleeps through waits while they total at most `max_wait` seconds.

        0.0 once granted; otherwise the wait the caller must arrange itself (it frees its
        worker slot instead of sleeping longer).
        """
        deadline = time.monotonic() + max_wait
        slept = 0.0
        while True:
            wait = self.acquire(n, share=share)
            if wait <= 0 or time.monotonic() + wait > deadline:
                # A wait is a sleep for a token or a wait handed back, never the round trip to Redis (a slow
                # moment of the machine would count as waiting for the limit).
                waited = slept + max(wait, 0.0)
                if waited > 0:
                    RATELIMIT_WAITS.inc(self.name)
                    RATELIMIT_WAIT_SECONDS.inc(self.name, amount=waited)
                return wait
            time.sleep(wait)
            slept += wait

    def acquire_at(self, n: int = 1, *, share: float = 1.0) -> tuple[float, float | None]:
        """As `acquire`, with the Redis server time of the decision in seconds (None if Redis was unreachable)."""
        if not 0 < share <= 1:
            raise ValueError(f"rate limiter {self.name}: share must lie in (0, 1], not {share!r}")
        # A batch that can never fit would be rescheduled for ever: refuse it loudly instead.
        if not 1 <= n <= self.max_batch(share):
            raise ValueError(
                f"rate limiter {self.name}: a batch of {n} never fits a burst of {self.burst} at share {share:g}; "
                f"send batches of 1 to {self.max_batch(share)}"
            )
        schedules = [(self.key, self._interval_us, self._tau_us)]
        if share < 1:
            # The same tau at a longer interval: the share's burst is burst * share tokens.
            schedules.append((f"{self.key}:share:{share:g}", self._interval_us / share, self._tau_us))
        try:
            return _gcra(self._acquire, schedules, n)
        except redis.RedisError:
            logger.warning("rate limiter %s: Redis unreachable; letting %d sends through", self.name, n)
            return 0.0, None

    def penalize(self, seconds: float) -> None:
        """The provider answered 429: grant nobody a token for `seconds`, then resume at the rate without a burst."""
        try:
            self._penalize(keys=[self.key], args=[repr(self._tau_us), int(seconds * 1_000_000)])
        except redis.RedisError:
            logger.warning("rate limiter %s: Redis unreachable; penalty of %.1fs not recorded", self.name, seconds)
            return
        logger.info("rate limiter %s: provider pushed back; pausing all workers for %.1fs", self.name, seconds)

    def reset(self) -> None:
        self.client.delete(self.key, *self.client.keys(f"{self.key}:share:*"))


@dataclass(frozen=True)
class Bucket:
    """One throttle: at most `count` events in any `seconds`, all `count` at once after a quiet spell.

    The same GCRA as the provider limits (interval = seconds / count, burst = count), for callers
    that are not providers: a public form per client IP, an API token's requests, a login name.
    """

    key: str
    count: int
    seconds: float

    def __post_init__(self) -> None:
        if self.count < 1 or self.seconds <= 0:
            raise ValueError(
                f"throttle {self.key}: count must be >= 1 and seconds > 0, not {self.count}/{self.seconds}"
            )

    @property
    def schedule(self) -> tuple[str, float, float]:
        """(Redis key, emission interval µs, tau µs) as the GCRA script takes them."""
        return f"jobs:throttle:{self.key}", self.seconds * 1_000_000 / self.count, self.seconds * 1_000_000


@lru_cache(maxsize=1)
def _take_script():
    return redis_client().register_script(_ACQUIRE)


def throttle_take(buckets: Sequence[Bucket]) -> float:
    """One event from every bucket, all or none, in one Redis round trip.

    0.0 when granted; otherwise the seconds until all of them would grant (nothing is taken).
    If Redis is unreachable the event is allowed: a broken throttle must not take a site down.
    """
    try:
        return _gcra(_take_script(), [bucket.schedule for bucket in buckets], 1)[0]
    except redis.RedisError:
        logger.warning("throttle %s: Redis unreachable; letting the request through", [b.key for b in buckets])
        return 0.0


def _gcra(script, schedules: Sequence[tuple[str, float, float]], n: int) -> tuple[float, float]:
    """Take n tokens from every (key, interval µs, tau µs) schedule, all or none, with the _ACQUIRE script:
    (seconds to wait, 0.0 when granted; the Redis server time in seconds).  RedisError is the caller's."""
    keys, args = [], [n]
    for key, interval_us, tau_us in schedules:
        keys.append(key)
        args += [repr(interval_us), repr(tau_us)]
    granted, wait_us, now_us = script(keys=keys, args=args)
    return (0.0 if granted else wait_us / 1_000_000), now_us / 1_000_000


_CONFIG_KEYS = {"rate_per_second", "burst", "shares"}


def rate_limiter_for(name: str) -> RateLimiter | None:
    """The limiter `settings.JOBS_RATE_LIMITS` configures for `name`, or None when it has no limit."""
    config = getattr(settings, "JOBS_RATE_LIMITS", {}).get(name)
    if config is None:
        return None
    unknown = set(config) - _CONFIG_KEYS
    if unknown or "rate_per_second" not in config:
        raise ImproperlyConfigured(
            f"JOBS_RATE_LIMITS[{name!r}] has keys {sorted(config)}; "
            f"expected rate_per_second and optionally burst, shares"
        )
    frozen = {**config, "shares": tuple(sorted((config.get("shares") or {}).items()))}
    return _limiter(name, tuple(sorted(frozen.items())))


@lru_cache(maxsize=64)
def _limiter(name: str, config: tuple) -> RateLimiter:
    # Called on every send: build (and register the scripts) once per process and configuration.
    options = dict(config)
    return RateLimiter(name, **{**options, "shares": dict(options["shares"])})

"""Circuit breakers shared by every worker process: state lives in Redis, changed only by atomic Lua scripts.

    closed --(N consecutive failures)--> open --(cool-down passed, one probe admitted)--> half_open
    half_open --(the probe succeeds)--> closed      half_open --(the probe fails)--> open
    half_open --(the probe called nobody: no token, 429)--> open, the probe slot free again at once

Only the probe's own result moves a half-open breaker: `allow` hands the probe a token,
and a success or failure reported without it (a call admitted before the breaker
opened, finishing late) changes nothing while the breaker is open or half-open.

A breaker also remembers how long its dependency asked to be left alone (`pace`: a 429
with Retry-After).  That is not a failure (the dependency is up), but until it passes
`allow` answers `paced` with the wait, so callers treat the dependency as busy.

Time comes from the Redis server's clock, so worker clocks do not matter.  Exactly one
probe is admitted fleet-wide after a cool-down (a lock with a TTL, so a probe whose
worker dies does not keep the breaker half-open for ever).  If Redis itself is
unreachable the breaker lets calls through: a broken breaker must not stop delivery.
"""

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis
from django.conf import settings

from jobs.redis import redis_client

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
#: Decisions of `allow` besides CLOSED and OPEN: you are the one probe; the dependency asked us to wait.
PROBE, PACED = "probe", "paced"

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "

# KEYS: state hash, probe lock. ARGV: cool-down ms, probe ttl ms, probe token.
# Returns {decision, failures, wait ms}: decision is closed | probe | open | paced.
_ALLOW = (
    _NOW_MS
    + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local paced = tonumber(redis.call('HGET', KEYS[1], 'paced_until') or '0')
if state == 'closed' then
  if paced > now then return {'paced', 0, paced - now} end
  return {'closed', tonumber(redis.call('HGET', KEYS[1], 'failures') or '0'), 0}
end
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0')
local cooldown = tonumber(ARGV[1])
if now - opened < cooldown then return {'open', 0, cooldown - (now - opened)} end
if paced > now then return {'paced', 0, paced - now} end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'half_open')
  return {'probe', 0, 0}
end
return {'open', 0, math.max(redis.call('PTTL', KEYS[2]), 0)}
"""
)

# KEYS: state hash, probe lock. ARGV: probe token ('' if the caller is no probe).
# Returns the previous state when it changed, else ''.
_SUCCESS = """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then
  redis.call('HSET', KEYS[1], 'failures', 0)
  return ''
end
if ARGV[1] == '' or redis.call('GET', KEYS[2]) ~= ARGV[1] then return '' end
redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0)
redis.call('DEL', KEYS[2])
return state
"""

# KEYS: state hash, probe lock. ARGV: threshold, probe token, failures this call counts for.  Returns the previous
# state when it changed, else ''.
_FAILURE = (
    _NOW_MS
    + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'open' then return '' end
if state == 'half_open' then
  if ARGV[2] == '' or redis.call('GET', KEYS[2]) ~= ARGV[2] then return '' end
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now)
  redis.call('DEL', KEYS[2])
  return state
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', tonumber(ARGV[3] or '1'))
if failures >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now)
  return state
end
return ''
"""
)

# KEYS: state hash, probe lock. ARGV: probe token.  The probe called nobody: back to open with
# the cool-down already over, so the next caller probes at once.  Returns 1 if released.
_RELEASE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if redis.call('HGET', KEYS[1], 'state') == 'half_open' then redis.call('HSET', KEYS[1], 'state', 'open') end
return 1
"""

# KEYS: state hash. ARGV: milliseconds.  Paces never shorten each other.  Returns the ms left.
_PACE = (
    _NOW_MS
    + """
local until_ms = math.max(tonumber(redis.call('HGET', KEYS[1], 'paced_until') or '0'), now + tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'paced_until', until_ms)
return until_ms - now
"""
)


@dataclass(frozen=True)
class BreakerConfig:
    #: Consecutive failures that open the breaker.
    failure_threshold: int = 5
    #: Seconds an open breaker short-circuits calls before admitting one probe.
    cooldown_seconds: float = 10.0
    #: Seconds a probe may take before another worker may probe instead.
    probe_timeout_seconds: float = 15.0


def breaker_config() -> BreakerConfig:
    return BreakerConfig(**getattr(settings, "JOBS_CIRCUIT_BREAKER", {}))


@dataclass(frozen=True)
class Permit:
    """What `allow` decided: call (closed), call as the one probe, or do not call (open, paced) for `wait` seconds."""

    decision: str
    #: Seconds until calling may be allowed again (open: the rest of the cool-down; paced: of the pace).
    wait: float = 0.0
    #: Proves a probe is this caller's: only its result closes or reopens the breaker.
    token: str = ""
    #: Failures counted while closed; 0 lets a success skip its round trip.
    failures: int = 0

    @property
    def call(self) -> bool:
        return self.decision in (CLOSED, PROBE)


#: What an unreachable Redis gets: call (a broken breaker must not stop delivery).
_LET_THROUGH = Permit(CLOSED, failures=-1)


#: Where the names of breakers that exist before they ever trip come from (the domain registers its own).
_name_sources: list[Callable[[], Iterable[str]]] = []


def register_breaker_names(source: Callable[[], Iterable[str]]) -> None:
    """Add a callable naming breakers the domain uses (its providers, say), so one that never tripped still shows."""
    if source not in _name_sources:
        _name_sources.append(source)


def registered_breaker_names() -> set[str]:
    return {name for source in _name_sources for name in source()}


class CircuitBreaker:
    """The breaker of one named dependency (a provider account)."""

    def __init__(self, name: str, config: BreakerConfig | None = None, client: redis.Redis | None = None) -> None:
        self.name = name
        self.config = config or breaker_config()
        self.client = client or redis_client()
        self.key = f"jobs:breaker:{name}"
        self.probe_key = f"jobs:breaker:{name}:probe"
        self._allow = self.client.register_script(_ALLOW)
        self._success = self.client.register_script(_SUCCESS)
        self._failure = self.client.register_script(_FAILURE)
        self._release = self.client.register_script(_RELEASE)
        self._pace = self.client.register_script(_PACE)

    def allow(self) -> Permit:
        """Whether to call now: closed (call), probe (call; you are the one probe), open or paced (do not)."""
        token = uuid.uuid4().hex
        try:
            decision, failures, wait_ms = self._allow(
                keys=[self.key, self.probe_key],
                args=[int(self.config.cooldown_seconds * 1000), int(self.config.probe_timeout_seconds * 1000), token],
            )
        except redis.RedisError:
            logger.warning("breaker %s: Redis unreachable; letting the call through", self.name, exc_info=True)
            return _LET_THROUGH
        decision = decision.decode() if isinstance(decision, bytes) else decision
        if decision == PROBE:
            self._transition(OPEN, HALF_OPEN, "cool-down over; one probe admitted")
        return Permit(
            decision, wait=int(wait_ms) / 1000, token=token if decision == PROBE else "", failures=int(failures)
        )

    def record_success(self, permit: Permit | None = None) -> None:
        """The call went through: resets the failure count; closes a half-open breaker if `permit` is its probe."""
        if permit is not None and permit.decision == CLOSED and permit.failures == 0:
            return  # closed with no failures counted: nothing to reset, save the round trip
        try:
            previous = self._success(keys=[self.key, self.probe_key], args=[permit.token if permit else ""])
        except redis.RedisError:
            logger.warning("breaker %s: Redis unreachable; success not recorded", self.name)
            return
        if previous:
            self._transition(previous.decode() if isinstance(previous, bytes) else previous, CLOSED, "probe succeeded")

    def record_failure(self, reason: str = "", permit: Permit | None = None, *, count: int = 1) -> None:
        """The call failed: counts towards opening (as `count` failures: a batch call that failed for 50 items
        is 50 failed items, as 50 single calls would have been); reopens a half-open breaker if `permit` is
        its probe."""
        try:
            previous = self._failure(
                keys=[self.key, self.probe_key],
                args=[self.config.failure_threshold, permit.token if permit else "", max(1, count)],
            )
        except redis.RedisError:
            logger.warning("breaker %s: Redis unreachable; failure not recorded", self.name)
            return
        if previous:
            self._transition(previous.decode() if isinstance(previous, bytes) else previous, OPEN, reason)

    def release(self, permit: Permit) -> None:
        """A probe that called nobody (no token, told to wait) gives its slot back at once."""
        if permit.decision != PROBE:
            return
        try:
            released = self._release(keys=[self.key, self.probe_key], args=[permit.token])
        except redis.RedisError:
            logger.warning("breaker %s: Redis unreachable; probe slot not given back", self.name)
            return
        if released:
            self._transition(HALF_OPEN, OPEN, "the probe called nobody; slot given back")

    def pace(self, seconds: float) -> float:
        """The dependency asked us to wait `seconds` (429 Retry-After): `allow` answers paced until then."""
        try:
            return int(self._pace(keys=[self.key], args=[max(1, int(seconds * 1000))])) / 1000
        except redis.RedisError:
            logger.warning("breaker %s: Redis unreachable; pace of %.1fs not recorded", self.name, seconds)
            return seconds

    def state(self) -> dict:
        """The shared state as stored: state, failures, opened_at (Redis ms)."""
        raw = self.client.hgetall(self.key)
        data = {k.decode(): v.decode() for k, v in raw.items()}
        return {
            "state": data.get("state", CLOSED),
            "failures": int(data.get("failures", 0)),
            "opened_at_ms": int(data["opened_at"]) if "opened_at" in data else None,
        }

    def reset(self) -> None:
        self.client.delete(self.key, self.probe_key)

    def _transition(self, from_state: str, to_state: str, reason: str) -> None:
        from jobs.models import BreakerTransition

        log = logger.warning if to_state == OPEN else logger.info
        log("breaker %s: %s -> %s (%s)", self.name, from_state, to_state, reason)
        try:
            BreakerTransition.objects.create(
                breaker=self.name, from_state=from_state, to_state=to_state, reason=reason[:500]
            )
        except Exception:  # the log line above is the record of last resort
            logger.warning("breaker %s: transition not stored", self.name, exc_info=True)


_built: dict[tuple[str, int | None], CircuitBreaker] = {}


def breaker_named(name: str, *, failure_threshold: int | None = None) -> CircuitBreaker:
    """The breaker of `name`, built once per process (its scripts registered once); `failure_threshold` overrides
    JOBS_CIRCUIT_BREAKER's for a dependency that needs its own (the state in Redis is shared either way)."""
    breaker = _built.get((name, failure_threshold))
    if breaker is None:
        config = breaker_config()
        if failure_threshold is not None:
            config = BreakerConfig(failure_threshold, config.cooldown_seconds, config.probe_timeout_seconds)
        breaker = _built[(name, failure_threshold)] = CircuitBreaker(name, config)
    return breaker

"""Circuit breakers shared by every worker process: state lives in Redis, changed only by atomic Lua scripts.

    closed --(N consecutive failures)--> open --(cool-down passed, one probe admitted)--> half_open
    half_open --(probe succeeds)--> closed          half_open --(probe fails)--> open

Time comes from the Redis server's clock, so worker clocks do not matter.  Exactly one
probe is admitted fleet-wide after a cool-down (a lock with a TTL, so a probe whose
worker dies does not keep the breaker half-open for ever).  If Redis itself is
unreachable the breaker lets calls through: a broken breaker must not stop delivery.
"""

import logging
import uuid
from dataclasses import dataclass

import redis
from django.conf import settings

from jobs.redis import redis_client

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "

# KEYS: state hash, probe lock. ARGV: cool-down ms, probe ttl ms, probe token.
# Returns {decision, failures}: decision is closed | probe | open.
_ALLOW = (
    _NOW_MS
    + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then
  return {'closed', tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')}
end
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0')
if now - opened < tonumber(ARGV[1]) then return {'open', 0} end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'half_open')
  return {'probe', 0}
end
return {'open', 0}
"""
)

# KEYS: state hash, probe lock. Returns the previous state when it changed, else ''.
_SUCCESS = """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then
  redis.call('HSET', KEYS[1], 'failures', 0)
  return ''
end
redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0)
redis.call('DEL', KEYS[2])
return state
"""

# KEYS: state hash, probe lock. ARGV: threshold. Returns the previous state when it changed, else ''.
_FAILURE = (
    _NOW_MS
    + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'open' then return '' end
if state == 'half_open' then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now)
  redis.call('DEL', KEYS[2])
  return state
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now)
  return state
end
return ''
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

    def allow(self) -> str:
        """'closed' (call normally), 'probe' (you are the one probe) or 'open' (do not call)."""
        try:
            decision, failures = self._allow(
                keys=[self.key, self.probe_key],
                args=[
                    int(self.config.cooldown_seconds * 1000),
                    int(self.config.probe_timeout_seconds * 1000),
                    uuid.uuid4().hex,
                ],
            )
        except redis.RedisError:
            logger.warning("breaker %s: Redis unreachable; letting the call through", self.name, exc_info=True)
            return CLOSED
        decision = decision.decode() if isinstance(decision, bytes) else decision
        self._clean = decision == CLOSED and int(failures) == 0
        if decision == "probe":
            self._transition(OPEN, HALF_OPEN, "cool-down over; one probe admitted")
        return decision

    def record_success(self) -> None:
        if getattr(self, "_clean", False):
            return  # closed with no failures counted: nothing to reset, save the round trip
        try:
            previous = self._success(keys=[self.key, self.probe_key])
        except redis.RedisError:
            logger.warning("breaker %s: Redis unreachable; success not recorded", self.name)
            return
        if previous:
            self._transition(previous.decode() if isinstance(previous, bytes) else previous, CLOSED, "call succeeded")

    def record_failure(self, reason: str = "") -> None:
        self._clean = False
        try:
            previous = self._failure(keys=[self.key, self.probe_key], args=[self.config.failure_threshold])
        except redis.RedisError:
            logger.warning("breaker %s: Redis unreachable; failure not recorded", self.name)
            return
        if previous:
            self._transition(previous.decode() if isinstance(previous, bytes) else previous, OPEN, reason)

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

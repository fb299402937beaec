"""Retry policy: exponential backoff with full jitter, Retry-After honoured, attempts and time budget bounded."""

import random
from datetime import UTC, datetime, timedelta

from jobs.retry import RetryPolicy

POLICY = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=30.0, budget_seconds=120)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_delay_is_jittered_below_an_exponential_ceiling():
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (6, 30), (10, 30)]:
        delays = [POLICY.delay(attempt, rng=rng) for _ in range(500)]
        assert 0 <= min(delays) and max(delays) <= ceiling
        assert max(delays) > ceiling * 0.8, "full jitter spreads over the whole range"


def test_retry_after_is_never_undercut():
    rng = random.Random(1)
    assert all(POLICY.delay(1, retry_after=7, rng=rng) >= 7 for _ in range(200))


def test_no_retry_after_the_last_attempt():
    assert POLICY.next_attempt_at(attempt=5, created_at=NOW, now=NOW) is None
    assert POLICY.next_attempt_at(attempt=4, created_at=NOW, now=NOW) is not None


def test_no_retry_past_the_time_budget():
    late = NOW + timedelta(seconds=119)
    assert POLICY.next_attempt_at(attempt=1, created_at=NOW, now=late, retry_after=5) is None

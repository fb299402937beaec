"""The global rate limiter on the real Redis: exact rates across threads and processes, batches, shares, 429 pauses."""

import multiprocessing
import threading
import time
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from jobs.ratelimit import RateLimiter, rate_limiter_for

RATE = 200
DURATION = 2.0


@pytest.fixture
def name() -> str:
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    RateLimiter(name, 1).reset()


def _hammer(name: str, start: float, grants: list[float]) -> None:
    """Ask for one token at a time until Redis says DURATION has passed; record the Redis time of each grant."""
    limiter = RateLimiter(name, RATE)
    while True:
        wait, at = limiter.acquire_at(1)
        if at >= start + DURATION:
            return
        if wait == 0.0:
            grants.append(at)
        else:
            time.sleep(min(wait, 0.002))


def _hammer_process(name: str, start: float, results: multiprocessing.Queue) -> None:
    from jobs.redis import redis_client

    redis_client.cache_clear()  # a connection pool is never shared with the parent
    grants: list[float] = []
    threads = [threading.Thread(target=_hammer, args=(name, start, grants)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(grants)


def test_grants_exactly_the_rate_to_threads_and_processes_together(name):
    limiter = RateLimiter(name, RATE)
    seconds, micros = limiter.client.time()
    start = seconds + micros / 1_000_000
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    processes = [context.Process(target=_hammer_process, args=(name, start, results)) for _ in range(3)]
    for p in processes:
        p.start()
    grants: list[float] = []
    threads = [threading.Thread(target=_hammer, args=(name, start, grants)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in processes:
        grants.extend(results.get(timeout=10))
    for p in processes:
        p.join(timeout=10)
        assert p.exitcode == 0

    grants.sort()
    assert RATE * DURATION <= len(grants) <= RATE * DURATION + limiter.burst + 2
    # GCRA's promise: in any window of length L at most burst + rate * L tokens.
    busiest = max(sum(1 for g in grants[i:] if g < at + 1.0) for i, at in enumerate(grants))
    assert busiest <= RATE + limiter.burst
    # Once the initial burst is spent, a full second carries the rate and no more.
    assert RATE - 5 <= sum(1 for g in grants if start + 1.0 <= g < start + 2.0) <= RATE + 1


def test_a_batch_is_granted_whole_or_not_at_all(name):
    limiter = RateLimiter(name, 10, burst=10)
    assert limiter.acquire(8) == 0.0
    wait = limiter.acquire(5)
    assert 0.2 < wait <= 0.3  # three tokens short at 10/s
    assert limiter.acquire(2) == 0.0  # the refused batch took nothing
    with pytest.raises(ValueError, match="batches of 1 to 10"):
        limiter.acquire(11)
    with pytest.raises(ValueError, match="batches of 1 to 8"):
        limiter.acquire(9, share=0.8)


def test_marketing_share_leaves_headroom_for_urgent_work(name):
    # Slow enough that no token refills while the loop below runs.
    limiter = RateLimiter(name, 10, shares={"bulk": 0.8})
    marketing = limiter.share_for("bulk")
    assert marketing == 0.8 and limiter.share_for("urgent") == 1.0
    granted = 0
    while limiter.acquire(1, share=marketing) == 0.0:
        granted += 1
    assert 8 <= granted <= 9  # 80 % of the burst (a ninth only if the loop outlived a refill)
    assert limiter.acquire(1, share=marketing) > 0.0
    # Marketing is saturated, yet a security send still goes out now: the last 20 % was kept.
    assert limiter.acquire(2, share=limiter.share_for("urgent")) == 0.0


def test_marketing_share_caps_the_sustained_rate_and_urgent_sends_get_through(name):
    limiter = RateLimiter(name, 200, burst=10, shares={"bulk": 0.5})
    seconds, micros = limiter.client.time()
    start = seconds + micros / 1_000_000
    marketing, urgent, urgent_refused = [], [], 0
    next_urgent = start
    while True:
        # Marketing asks as fast as it can; it must never get more than its half.
        wait, at = limiter.acquire_at(5, share=0.5)
        if at >= start + 2.0:
            break
        if wait == 0.0:
            marketing.append(at)
        if at >= next_urgent:  # an urgent send every 20 ms (50/s)
            next_urgent += 0.02
            if limiter.acquire(1) == 0.0:
                urgent.append(at)
            else:
                urgent_refused += 1
        time.sleep(0.0005)
    in_last_second = 5 * sum(1 for g in marketing if start + 1.0 <= g < start + 2.0)
    assert 90 <= in_last_second <= 105
    assert urgent_refused == 0 and len(urgent) >= 90


def test_acquire_within_sleeps_through_short_waits_only(name):
    limiter = RateLimiter(name, 10, burst=2)
    assert limiter.acquire(2) == 0.0
    started = time.monotonic()
    assert limiter.acquire_within(1, max_wait=0.5) == 0.0  # about 0.1 s slept
    assert time.monotonic() - started >= 0.05
    assert limiter.acquire_within(2, max_wait=0.05) > 0.05  # too long: the caller reschedules


def test_a_full_share_caller_is_not_limited_by_the_marketing_share(name):
    limiter = RateLimiter(name, 100)
    assert limiter.acquire(100) == 0.0
    assert limiter.acquire(1) > 0.0


def test_a_429_pauses_every_worker(name):
    limiter = RateLimiter(name, 20)
    other_worker = RateLimiter(name, 20)
    assert limiter.acquire(1) == 0.0
    limiter.penalize(0.5)
    limiter.penalize(0.5)  # several workers see the same 429: the pauses overlap, not add up
    wait = other_worker.acquire(1)
    assert 0.5 < wait <= 0.5 + 1 / 20
    assert other_worker.acquire(1, share=0.8) > 0.4  # marketing is paused as well
    time.sleep(wait)
    assert other_worker.acquire(1) == 0.0
    assert other_worker.acquire(1) > 0.0  # after the pause the rate resumes without a burst


def test_unreachable_redis_lets_sends_through():
    import redis

    from jobs.redis import RETRY

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=RETRY)
    limiter = RateLimiter("unreachable", 1, client=dead)
    assert limiter.acquire(1) == 0.0
    assert limiter.acquire(1) == 0.0
    limiter.penalize(5)  # logged, not raised


@override_settings(
    JOBS_RATE_LIMITS={"postmark": {"rate_per_second": 1000, "burst": 10, "shares": {"bulk": 0.8}}, "typo": {"rate": 5}}
)
def test_limits_come_from_settings():
    limiter = rate_limiter_for("postmark")
    assert (limiter.rate_per_second, limiter.burst, limiter.share_for("bulk")) == (1000, 10, 0.8)
    assert rate_limiter_for("twilio") is None
    with pytest.raises(ImproperlyConfigured, match="rate_per_second"):
        rate_limiter_for("typo")

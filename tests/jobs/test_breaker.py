"""The circuit breaker's shared state machine, on the real Redis."""

import threading
import time
import uuid

import pytest
from django.db import connection

from jobs.breaker import CLOSED, HALF_OPEN, OPEN, PACED, PROBE, BreakerConfig, CircuitBreaker
from jobs.models import BreakerTransition

pytestmark = pytest.mark.django_db


@pytest.fixture
def breaker() -> CircuitBreaker:
    b = CircuitBreaker(f"test-{uuid.uuid4().hex[:8]}", BreakerConfig(failure_threshold=3, cooldown_seconds=0.5))
    yield b
    b.reset()


def test_opens_after_consecutive_failures_and_short_circuits(breaker):
    for _ in range(2):
        assert breaker.allow().decision == CLOSED
        breaker.record_failure("boom")
    assert breaker.state()["state"] == CLOSED
    breaker.record_failure("boom")
    assert breaker.state()["state"] == OPEN
    assert breaker.allow().decision == OPEN
    assert list(BreakerTransition.objects.filter(breaker=breaker.name).values_list("from_state", "to_state")) == [
        (CLOSED, OPEN)
    ]


def test_a_call_that_failed_for_several_items_counts_each(breaker):
    breaker.record_failure("batch of 2 failed", count=2)
    assert breaker.state() | {"opened_at_ms": None} == {"state": CLOSED, "failures": 2, "opened_at_ms": None}
    breaker.record_failure("batch of 5 failed", count=5)
    assert breaker.state()["state"] == OPEN


def test_a_success_resets_the_count(breaker):
    breaker.record_failure()
    breaker.record_failure()
    breaker.allow()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state()["state"] == CLOSED


def test_after_cooldown_exactly_one_probe_is_admitted_across_processes(breaker):
    for _ in range(3):
        breaker.record_failure()
    time.sleep(0.6)
    # Another worker process is another client of the same Redis state.
    others = [CircuitBreaker(breaker.name, breaker.config) for _ in range(20)]
    decisions: list[str] = []

    def decide(other: CircuitBreaker) -> None:
        decisions.append(other.allow().decision)
        connection.close()  # the probe's transition row opened a connection in this thread

    threads = [threading.Thread(target=decide, args=(b,)) for b in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert decisions.count("probe") == 1
    assert decisions.count(OPEN) == 19
    assert breaker.state()["state"] == HALF_OPEN


def test_probe_success_closes_and_probe_failure_reopens(breaker):
    for _ in range(3):
        breaker.record_failure()
    time.sleep(0.6)
    probe = breaker.allow()
    assert probe.decision == PROBE
    breaker.record_failure("still down", probe)
    assert breaker.state()["state"] == OPEN
    assert breaker.allow().decision == OPEN  # a new cool-down started
    time.sleep(0.6)
    probe = breaker.allow()
    assert probe.decision == PROBE
    breaker.record_success(probe)
    assert breaker.state() == {"state": CLOSED, "failures": 0, "opened_at_ms": breaker.state()["opened_at_ms"]}
    transitions = list(
        BreakerTransition.objects.filter(breaker=breaker.name).order_by("at").values_list("to_state", flat=True)
    )
    assert transitions == [OPEN, HALF_OPEN, OPEN, HALF_OPEN, CLOSED]


def _half_open(breaker: CircuitBreaker):
    for _ in range(3):
        breaker.record_failure()
    time.sleep(0.6)
    probe = breaker.allow()
    assert probe.decision == PROBE
    return probe


def test_only_the_probes_own_result_moves_a_half_open_breaker(breaker):
    probe = _half_open(breaker)
    late = CircuitBreaker(breaker.name, breaker.config)
    # Calls admitted before the breaker opened finish late: they say nothing about now.
    late.record_success()
    late.record_failure("an old timeout")
    assert breaker.state()["state"] == HALF_OPEN
    assert late.allow().decision == OPEN, "the probe's slot is still taken"
    breaker.record_success(probe)
    assert breaker.state()["state"] == CLOSED


def test_a_probe_that_called_nobody_gives_its_slot_back_at_once(breaker):
    probe = _half_open(breaker)
    breaker.release(probe)
    assert breaker.state()["state"] == OPEN
    assert CircuitBreaker(breaker.name, breaker.config).allow().decision == PROBE, "the next caller probes at once"


def test_a_paced_dependency_is_not_called_until_the_pace_passes_and_is_not_a_failure(breaker):
    breaker.pace(0.4)
    permit = breaker.allow()
    assert permit.decision == PACED and 0.2 < permit.wait <= 0.4
    assert breaker.state() == {"state": CLOSED, "failures": 0, "opened_at_ms": None}
    breaker.pace(0.1)
    assert breaker.allow().wait > 0.2, "a shorter pace does not cut a longer one short"
    time.sleep(0.45)
    assert breaker.allow().decision == CLOSED


def test_unreachable_redis_lets_calls_through():
    import redis

    from jobs.redis import RETRY

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=RETRY)
    breaker = CircuitBreaker("unreachable", client=dead)
    assert breaker.allow().call
    breaker.record_failure()  # logged, not raised

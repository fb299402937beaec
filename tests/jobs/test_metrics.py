"""The runtime's /metrics: protected by basic auth; queues, breakers, limiters read from real Redis and PostgreSQL."""

import base64
import uuid

import pytest
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from jobs.breaker import CircuitBreaker
from jobs.publishing import publish
from jobs.ratelimit import RateLimiter
from jobs.redis import broker_client
from jobs.tasks import probe
from tests.support.metrics import scrape, value

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("auth", [None, "prometheus:wrong", "nobody:prometheus"])
def test_metrics_refuse_a_scraper_without_the_credentials(client, auth):
    headers = {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    response = client.get("/metrics", **headers)
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Basic")


def test_queue_depth_and_the_age_of_its_oldest_message():
    from kombu import Queue
    from prometheus_client import CollectorRegistry, generate_latest

    from jobs.metrics import PlatformCollector
    from settings.celery_app import app

    # A queue of this test only: the session's worker pools would empty a real one.
    queue = f"metrics-test-{uuid.uuid4().hex[:6]}"
    app.amqp.queues.add(Queue(queue, routing_key=queue))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlatformCollector(lambda: [queue]))
    try:
        publish(probe.name, args=["metrics-test"], queue=queue)
        families = text_string_to_metric_families(generate_latest(registry).decode())
        samples = {(s.name, s.labels.get("queue")): s.value for f in families for s in f.samples}
    finally:
        app.amqp.queues.pop(queue, None)
        broker_client().delete(queue)
    assert samples[("notify_queue_depth", queue)] == 1
    assert 0 <= samples[("notify_queue_oldest_age_seconds", queue)] < 60


def test_an_open_breaker_shows_as_2():
    breaker = CircuitBreaker("metrics-test")
    breaker.reset()
    for _ in range(settings.JOBS_CIRCUIT_BREAKER["failure_threshold"]):
        breaker.record_failure("down")
    try:
        from django.test import Client

        samples = scrape(Client(HTTP_HOST="127.0.0.1"))
        assert value(samples, "notify_breaker_state", breaker="metrics-test") == 2
    finally:
        breaker.reset()


def test_waiting_for_a_rate_limit_token_is_counted(client):
    name = f"metrics-{uuid.uuid4().hex[:6]}"
    limiter = RateLimiter(name, 20, burst=1)
    try:
        assert limiter.acquire_within(1, max_wait=1.0) == 0.0
        assert limiter.acquire_within(1, max_wait=1.0) == 0.0  # waited about 50 ms
        samples = scrape(client)
    finally:
        limiter.reset()
    assert value(samples, "notify_ratelimit_waits_total", limiter=name) == 1
    assert 0.01 < value(samples, "notify_ratelimit_wait_seconds_total", limiter=name) < 1.0

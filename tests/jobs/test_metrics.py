"""/metrics: protected by basic auth, and every figure comes from a real event (Redis, PostgreSQL, the sandbox)."""

import base64
import io
import json
import logging
import uuid

import pytest
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from jobs.breaker import CircuitBreaker
from jobs.logging import JsonFormatter
from jobs.publishing import publish
from jobs.ratelimit import RateLimiter
from jobs.redis import broker_client
from jobs.tasks import probe
from notifications.delivery import notification_deliver
from notifications.services import notification_send

pytestmark = pytest.mark.django_db


def scrape(client) -> dict[tuple[str, tuple], float]:
    auth = "Basic " + base64.b64encode(settings.METRICS_BASIC_AUTH.encode()).decode()
    response = client.get("/metrics", HTTP_AUTHORIZATION=auth)
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, metric: str, **labels) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


def send(to: str, priority: str = "security") -> None:
    notification, _ = notification_send(
        priority=priority, channel="email", template="password_reset", context={"code": "123456"}, to=to
    )
    notification_deliver(notification_id=str(notification.pk))


@pytest.mark.parametrize("auth", [None, "prometheus:wrong", "nobody:prometheus"])
def test_metrics_refuse_a_scraper_without_the_credentials(client, auth):
    headers = {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    response = client.get("/metrics", **headers)
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Basic")


def test_a_delivery_counts_a_send_and_its_latency(client, ledger):
    before = scrape(client)
    send(f"metrics-{uuid.uuid4().hex[:6]}@example.com")
    after = scrape(client)

    labels = {"channel": "email", "priority": "security", "provider": "postmark", "outcome": "sent"}
    assert value(after, "notify_sends_total", **labels) == value(before, "notify_sends_total", **labels) + 1
    latency = {"channel": "email", "priority": "security"}
    assert value(after, "notify_delivery_latency_seconds_count", **latency) == (
        value(before, "notify_delivery_latency_seconds_count", **latency) + 1
    )
    assert value(after, "notify_delivery_latency_seconds_bucket", le="+Inf", **latency) == value(
        after, "notify_delivery_latency_seconds_count", **latency
    )


def test_a_permanent_refusal_counts_a_dead_letter(client, ledger, django_capture_on_commit_callbacks):
    before = scrape(client)
    with django_capture_on_commit_callbacks(execute=True):
        send("gone@invalid.example", priority="transactional")
    after = scrape(client)
    queue = {"queue": "transactional.email"}
    assert value(after, "notify_dead_letters_total", **queue) == value(before, "notify_dead_letters_total", **queue) + 1
    assert value(after, "notify_dead_letters_open") == value(before, "notify_dead_letters_open") + 1
    dead = {"channel": "email", "priority": "transactional", "provider": "postmark", "outcome": "dead"}
    assert value(after, "notify_sends_total", **dead) == value(before, "notify_sends_total", **dead) + 1


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


def test_a_running_campaign_reports_its_progress(client):
    from notifications.models import Campaign

    campaign = Campaign.objects.create(
        name="Autumn", template="newsletter", channel="email", status="running",
        materialized_count=100, sent_count=40, dead_count=1, skipped_count=9,
    )  # fmt: skip
    samples = scrape(client)
    labels = {"campaign": str(campaign.pk), "name": "Autumn"}
    assert value(samples, "notify_campaign_messages", state="sent", **labels) == 40
    assert value(samples, "notify_campaign_messages", state="remaining", **labels) == 50


def test_each_state_change_is_one_json_line_with_its_fields(ledger):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    events = logging.getLogger("notifications.events")
    events.addHandler(handler)
    try:
        send("json-log@example.com")
    finally:
        events.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["outcome"] for line in lines] == ["sending", "sent"]
    sent = lines[-1]
    assert {"notification_id", "priority", "channel", "provider", "attempt", "ts", "level"} <= set(sent)
    assert sent["to"] == "j***@example.com", "the address, masked"
    assert (sent["priority"], sent["channel"], sent["provider"], sent["attempt"]) == (
        "security",
        "email",
        "postmark",
        1,
    )

"""The notification domain's metrics on /metrics: sends, latency, dead letters and campaign progress counted from
real events, and one JSON log line per state change."""

import io
import json
import logging
import uuid
from contextlib import contextmanager

import pytest

from jobs.logging import JsonFormatter
from notifications.delivery import notification_deliver
from notifications.models import Campaign
from notifications.services import notification_send
from tests.support.metrics import scrape, value

pytestmark = pytest.mark.django_db


def send(to: str, priority: str = "security") -> None:
    notification, _ = notification_send(
        priority=priority, channel="email", template="password_reset", context={"code": "123456"}, to=to
    )
    notification_deliver(notification_ids=[str(notification.pk)])


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


def test_a_running_campaign_reports_its_progress(client):
    campaign = Campaign.objects.create(
        name="Autumn", template="newsletter", channel="email", status="running",
        materialized_count=100, sent_count=40, dead_count=1, skipped_count=9,
    )  # fmt: skip
    samples = scrape(client)
    labels = {"campaign": str(campaign.pk), "name": "Autumn"}
    assert value(samples, "notify_campaign_messages", state="sent", **labels) == 40
    assert value(samples, "notify_campaign_messages", state="remaining", **labels) == 50


@contextmanager
def event_lines(level: int):
    """The JSON lines notifications.events writes at `level` meanwhile (a list, filled when the block ends)."""
    stream, lines = io.StringIO(), []
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    events = logging.getLogger("notifications.events")
    events.addHandler(handler)
    previous = events.level
    events.setLevel(level)
    try:
        yield lines
    finally:
        events.removeHandler(handler)
        events.setLevel(previous)
        lines.extend(json.loads(line) for line in stream.getvalue().splitlines())


def test_each_state_change_is_one_json_line_with_its_fields(ledger):
    with event_lines(logging.DEBUG) as lines:  # each send's lines are DEBUG (EVENTS_LOG_LEVEL)
        send("json-log@example.com")
    assert [line["outcome"] for line in lines] == ["sending", "sent"]
    sent = lines[-1]
    assert sent["level"] == "DEBUG"
    assert {"notification_id", "priority", "channel", "provider", "attempt", "ts", "level"} <= set(sent)
    assert sent["to"] == "j***@example.com", "the address, masked"
    assert (sent["priority"], sent["channel"], sent["provider"], sent["attempt"]) == (
        "security",
        "email",
        "postmark",
        1,
    )


def test_a_send_writes_no_line_at_info_and_a_retry_does(ledger):
    with event_lines(logging.INFO) as lines:
        send("quiet-log@example.com")
        ledger.set_fault("postmark", error_rate=1.0, status=503)
        ledger.set_fault("smtp", error_rate=1.0)
        send("loud-log@example.com", priority="transactional")
    assert [(line["to"], line["outcome"]) for line in lines] == [("l***@example.com", "retry")]

"""The outbox relay serves urgency first and republishes a queued row only when its message is really gone."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.redis import QueueHead
from notifications.models import Notification, Recipient
from notifications.recovery import notification_relay

pytestmark = pytest.mark.django_db


def rows(count: int, *, priority: str, **fields) -> list[Notification]:
    recipient = Recipient.objects.create(email=f"{priority}-{count}@example.com")
    notifications = Notification.objects.bulk_create(
        [
            Notification(
                idempotency_key=f"{priority}-{i}-{timezone.now().timestamp()}",
                priority=priority,
                channel="email",
                recipient=recipient,
                to=recipient.email,
                template="password_reset",
                context={"code": "1"},
                **fields,
            )
            for i in range(count)
        ]
    )
    return notifications


def test_a_marketing_backlog_does_not_delay_a_due_security_row(settings, django_capture_on_commit_callbacks):
    settings.RELAY_BATCH_SIZE = 50
    due = {"status": "failed", "next_attempt_at": timezone.now() - timedelta(seconds=5)}
    rows(500, priority="marketing", **due)
    security = rows(5, priority="security", **due)

    with django_capture_on_commit_callbacks():
        published = notification_relay()

    statuses = set(Notification.objects.filter(pk__in=[n.pk for n in security]).values_list("status", flat=True))
    assert statuses == {"queued"}, "every due security row goes out in the first run"
    assert published == 5 + 50, "marketing gets its own budget, after security"


def test_a_queued_backlog_waiting_its_turn_is_not_republished(django_capture_on_commit_callbacks):
    old = timezone.now() - timedelta(minutes=5)
    waiting = rows(20, priority="marketing", status="queued", queued_at=old)
    # The queue still holds messages published before these rows: theirs are among them.
    head = QueueHead(depth=20_000, published_at=(old - timedelta(minutes=1)).timestamp())

    with django_capture_on_commit_callbacks() as callbacks:
        assert notification_relay(queue_heads=lambda queue: head) == 0

    assert callbacks == []
    assert set(Notification.objects.filter(pk__in=[n.pk for n in waiting]).values_list("queued_at", flat=True)) == {old}


def test_a_queued_row_whose_message_is_gone_is_republished(django_capture_on_commit_callbacks):
    old = timezone.now() - timedelta(minutes=5)
    (lost,) = rows(1, priority="transactional", status="queued", queued_at=old)
    # The queue's oldest message is younger than the row: its message was taken off it or lost.
    head = QueueHead(depth=300, published_at=(timezone.now() - timedelta(seconds=45)).timestamp())

    with django_capture_on_commit_callbacks() as callbacks:
        assert notification_relay(queue_heads=lambda queue: head) == 1

    assert len(callbacks) == 1
    lost.refresh_from_db()
    assert lost.queued_at > old

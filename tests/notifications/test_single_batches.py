"""Single sends in batches: a worker takes the notifications waiting in its queue with the one its message
names, sends them in one provider call and records them in one statement; what it must not take stays."""

import celery
import pytest
from celery import Celery

from notifications.delivery import notification_claim
from notifications.models import Notification
from notifications.services import notification_publish
from tests.support.sending import ORDER_SHIPPED, deliver, fanned_out_campaign, submit

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("closed_breakers")]


def test_one_message_sends_the_notifications_waiting_in_its_queue_in_one_call(ledger):
    waiting = [submit(to=f"wait{i}@example.com") for i in range(5)]

    deliver(waiting[0])

    rows = Notification.objects.filter(pk__in=[n.pk for n in waiting])
    assert {row.status for row in rows} == {"sent"}
    assert {row.attempts for row in rows} == {1}
    entries = ledger.entries()
    assert sorted(e["to"] for e in entries) == sorted(n.to for n in waiting)
    assert all(e["batch"] for e in entries), "one call to the vendor's batch endpoint"
    assert len({e["idempotency_key"] for e in entries}) == 5


def test_the_messages_of_notifications_taken_by_another_call_send_nothing_again(ledger):
    waiting = [submit(to=f"again{i}@example.com") for i in range(3)]
    deliver(waiting[0])
    for notification in waiting[1:]:
        assert deliver(notification).status == "sent"
    assert len(ledger.entries()) == 3


def test_a_batch_takes_only_its_own_queue_and_no_campaign_row(ledger):
    mine = submit(to="mine@example.com")
    other_priority = submit(priority="security", to="alert@example.com")
    other_channel = submit(channel="sms", to="+14155550100")
    campaign = fanned_out_campaign("batch-neighbour", count=2)
    campaign_rows = list(Notification.objects.filter(campaign=campaign))
    # Campaign rows queued on the single path (a retry, a relay) carry their campaign's content: never taken along.
    Notification.objects.filter(campaign=campaign).update(status="queued", priority="transactional")

    deliver(mine)

    assert Notification.objects.get(pk=mine.pk).status == "sent"
    for row in [other_priority, other_channel, *campaign_rows]:
        assert Notification.objects.get(pk=row.pk).status == "queued"
    assert [e["to"] for e in ledger.entries()] == ["mine@example.com"]


def test_a_lone_notification_is_claimed_alone(ledger):
    notification = submit(to="alone@example.com")
    (claimed,) = notification_claim(notification_ids=[str(notification.pk)], batch=True)
    assert claimed.pk == notification.pk


def test_a_batch_skips_rows_another_worker_is_claiming(ledger):
    first, locked, free = (submit(to=f"lock{i}@example.com") for i in range(3))
    Notification.objects.filter(pk=locked.pk).update(status="sending")  # taken by another worker meanwhile

    claimed = notification_claim(notification_ids=[str(first.pk)], batch=True)

    assert {row.pk for row in claimed} == {first.pk, free.pk}
    assert len({row.claim_token for row in claimed}) == 1


def test_a_submit_whose_publish_fails_goes_back_to_pending_for_the_relay(settings, django_capture_on_commit_callbacks):
    notification = submit(to="unpublished@example.com")
    assert notification.status == "queued", "written as queued: the publish follows the commit"
    # A broker nobody listens on: the publish fails at once.
    dead = Celery("dead-broker", broker="redis://127.0.0.1:1/0", set_as_current=False)
    dead.conf.broker_transport_options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    previous = celery.current_app._get_current_object()
    dead.set_current()
    try:
        with django_capture_on_commit_callbacks(execute=True):
            notification_publish(notification)
    finally:
        previous.set_current()
    assert Notification.objects.get(pk=notification.pk).status == "pending"


def test_a_duplicate_key_writes_nothing_not_even_a_recipient():
    from notifications.models import Recipient
    from notifications.services import notification_send

    first, created = notification_send(
        priority="transactional", channel="email", to="key@example.com", idempotency_key="k-1", **ORDER_SHIPPED
    )
    again, created_again = notification_send(
        priority="transactional", channel="email", to="other@example.com", idempotency_key="k-1", **ORDER_SHIPPED
    )
    assert (created, created_again, again.pk) == (True, False, first.pk)
    assert list(Recipient.objects.values_list("email", flat=True)) == ["key@example.com"]


def test_a_row_whose_worker_died_is_only_taken_alone(ledger):
    from datetime import timedelta

    from django.utils import timezone

    suspect, other, waiting = (submit(to=f"suspect{i}@example.com") for i in range(3))
    # Its worker died mid-call: still sending, its lease run out.
    Notification.objects.filter(pk=suspect.pk).update(
        status="sending", attempts=1, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )

    taken = notification_claim(notification_ids=[str(suspect.pk), str(other.pk)], batch=True)
    assert suspect.pk not in {row.pk for row in taken}, "a message naming others does not take it"

    Notification.objects.filter(pk__in=[row.pk for row in taken]).update(status="queued")
    (alone,) = notification_claim(notification_ids=[str(suspect.pk)], batch=True)
    assert (alone.pk, alone.outcome_unknown) == (suspect.pk, True), "its own message takes it, and nothing along"
    assert Notification.objects.get(pk=waiting.pk).status == "queued"


def test_a_429_stops_a_batch_of_single_calls_and_the_rest_use_no_attempt(ledger):
    from notifications.providers.base import HttpProvider

    ledger.set_fault("fcm", retry_after=30)
    devices = [submit(channel="push", to=f"device-token-batch-{i:04d}") for i in range(HttpProvider.concurrency + 4)]

    deliver(devices[0])

    rejected = ledger.stats()["fcm"]["rejected"]
    assert 1 <= rejected <= HttpProvider.concurrency, "only the calls already in flight met the 429; none began after"
    rows = Notification.objects.filter(pk__in=[n.pk for n in devices])
    assert {row.status for row in rows} == {"failed"}
    assert {row.attempts for row in rows} == {0}, "a 429 or a call not made uses no attempt"
    assert {row.next_attempt_at is not None for row in rows} == {True}
    assert sum("HTTP 429" in row.last_error for row in rows) == rejected, "each row says what happened to it"


def test_a_batch_that_fails_for_every_message_opens_the_breaker_at_once(ledger, settings):
    from jobs.breaker import OPEN, CircuitBreaker

    ledger.set_fault("postmark", outage=True)
    waiting = [submit(to=f"outage{i}@example.com") for i in range(settings.JOBS_CIRCUIT_BREAKER["failure_threshold"])]

    deliver(waiting[0])

    assert CircuitBreaker("postmark").state()["state"] == OPEN, "as many failed sends as single calls would open it"
    rows = Notification.objects.filter(pk__in=[n.pk for n in waiting])
    assert {row.status for row in rows} == {"sent"}, "the fallback took them in the same attempt"

"""One delivery attempt against the real sandbox: fallback, breakers, retries, dead letters, claim, relay."""

from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from jobs.breaker import OPEN, CircuitBreaker
from jobs.deadletters import deadletter_replay
from jobs.models import DeadLetter
from notifications.delivery import notification_claim
from notifications.models import Notification
from notifications.recovery import notification_relay
from tests.support.sending import ORDER_SHIPPED, deliver, submit

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("closed_breakers")]


def test_a_failing_primary_falls_back_to_the_next_provider_in_the_same_attempt(ledger):
    ledger.set_fault("postmark", error_rate=1.0, status=503)
    notification = deliver(submit())
    assert (notification.status, notification.provider, notification.attempts) == ("sent", "smtp", 1)
    (entry,) = ledger.entries(idempotency_key=notification.idempotency_key)
    assert entry["provider"] == "smtp"


def test_an_open_breaker_skips_the_primary_without_calling_it(ledger):
    ledger.set_fault("postmark", outage=True)
    for i in range(settings.JOBS_CIRCUIT_BREAKER["failure_threshold"]):
        deliver(submit(to=f"warm{i}@example.com"))
    assert CircuitBreaker("postmark").state()["state"] == OPEN
    rejected_before = ledger.stats()["postmark"]["rejected"]

    notification = deliver(submit(to="skip@example.com"))

    assert (notification.status, notification.provider) == ("sent", "smtp")
    assert ledger.stats()["postmark"]["rejected"] == rejected_before


def test_when_every_provider_fails_the_retry_waits_in_postgresql(ledger):
    ledger.set_fault("fcm", outage=True)
    before = timezone.now()
    notification = deliver(submit(channel="push", to="device-token-0123456789"))
    assert notification.status == "failed"
    assert notification.attempts == 1
    assert "fcm" in notification.last_error
    assert notification.next_attempt_at > before
    assert notification.first_failed_at is not None


def test_retry_after_is_honoured(ledger):
    ledger.set_fault("fcm", retry_after=5)
    before = timezone.now()
    notification = deliver(submit(channel="push", to="device-token-0123456789"))
    assert notification.status == "failed"
    assert notification.next_attempt_at >= before + timedelta(seconds=5)


def test_a_retry_is_not_claimable_before_it_is_due(ledger):
    ledger.set_fault("fcm", retry_after=30)
    notification = deliver(submit(channel="push", to="device-token-0123456789"))
    assert notification_claim(notification_ids=[str(notification.pk)]) == []
    assert Notification.objects.get(pk=notification.pk).attempts == notification.attempts


def test_after_the_last_attempt_it_is_dead_lettered_with_the_reason(ledger):
    ledger.set_fault("fcm", outage=True)
    notification = submit(channel="push", to="device-token-0123456789")
    max_attempts = settings.JOBS_RETRY_POLICIES["transactional"]["max_attempts"]
    for _ in range(max_attempts):
        Notification.objects.filter(pk=notification.pk, status="failed").update(next_attempt_at=timezone.now())
        notification = deliver(notification)
    assert notification.status == "dead"
    assert notification.attempts == max_attempts
    letter = DeadLetter.objects.get(subject_id=str(notification.pk))
    assert letter.attempts == max_attempts
    assert "retries exhausted" in letter.message and "fcm" in letter.message
    assert letter.queue == "transactional.push"


def test_an_unknown_outcome_is_not_sent_to_another_provider(ledger):
    ledger.set_fault("postmark", latency_ms=4500)  # longer than the provider timeout
    notification = deliver(submit())
    assert notification.status == "failed"
    assert "outcome unknown" in notification.last_error
    assert ledger.entries(provider="smtp") == []


def test_the_retry_after_an_unknown_outcome_reuses_the_provider_and_the_key(ledger):
    ledger.set_fault("postmark", latency_ms=4500)
    notification = deliver(submit())
    ledger.clear_faults()
    Notification.objects.filter(pk=notification.pk).update(next_attempt_at=timezone.now())
    notification = deliver(notification)
    assert (notification.status, notification.provider, notification.attempts) == ("sent", "postmark", 2)
    # The sandbox may have accepted the first request after our timeout: one entry, one replay at most.
    assert len(ledger.entries(idempotency_key=notification.idempotency_key)) == 1


def test_a_second_delivery_of_a_sent_notification_sends_nothing(ledger):
    notification = deliver(submit())
    assert notification.status == "sent"
    notification = deliver(notification)
    assert notification.attempts == 1
    assert len(ledger.entries(idempotency_key=notification.idempotency_key)) == 1


def test_a_notification_whose_worker_kept_dying_is_dead_lettered_at_the_claim(ledger):
    notification = submit()
    max_attempts = settings.JOBS_RETRY_POLICIES["transactional"]["max_attempts"]
    Notification.objects.filter(pk=notification.pk).update(
        status="sending", attempts=max_attempts, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert notification_claim(notification_ids=[str(notification.pk)]) == []
    notification.refresh_from_db()
    assert (notification.status, notification.attempts) == ("dead", max_attempts)
    assert "did not finish" in DeadLetter.objects.get(subject_id=str(notification.pk)).message
    assert ledger.entries() == []


def test_relay_publishes_what_nobody_will_pick_up(django_capture_on_commit_callbacks):
    now = timezone.now()
    stale_pending = submit(to="p@example.com")
    due_retry = submit(to="r@example.com")
    dead_worker = submit(to="s@example.com")
    fresh_queued = submit(to="q@example.com")
    Notification.objects.filter(pk=stale_pending.pk).update(status="pending", created_at=now - timedelta(minutes=5))
    Notification.objects.filter(pk=due_retry.pk).update(status="failed", next_attempt_at=now - timedelta(seconds=1))
    Notification.objects.filter(pk=dead_worker.pk).update(status="sending", lease_expires_at=now - timedelta(seconds=1))
    Notification.objects.filter(pk=fresh_queued.pk).update(status="queued", queued_at=now)

    with django_capture_on_commit_callbacks() as callbacks:
        count = notification_relay(now=now)

    assert count == 3
    assert len(callbacks) == 3
    statuses = dict(Notification.objects.values_list("to", "status"))
    assert statuses == {
        "p@example.com": "queued",
        "r@example.com": "queued",
        "s@example.com": "queued",
        "q@example.com": "queued",
    }
    assert notification_relay(now=now) == 0, "republished rows wait RELAY_QUEUED_AFTER_SECONDS before the next time"


def test_replay_from_the_dead_letter_table_keeps_the_idempotency_key(ledger, django_capture_on_commit_callbacks):
    notification = deliver(submit(channel="sms", to="+15005550001", message=ORDER_SHIPPED))
    assert notification.status == "dead"
    letter = DeadLetter.objects.get(subject_id=str(notification.pk))

    with django_capture_on_commit_callbacks() as callbacks:
        assert deadletter_replay(dead_letter=letter) is True

    replayed = Notification.objects.get(pk=notification.pk)
    assert (replayed.status, replayed.attempts, replayed.idempotency_key) == ("queued", 0, notification.idempotency_key)
    assert len(callbacks) == 1
    assert DeadLetter.objects.get(pk=letter.pk).status == "replayed"
    assert deadletter_replay(dead_letter=letter) is False, "a replayed letter is not replayed twice"


def test_an_attempt_that_called_no_provider_is_not_counted(ledger):
    ledger.set_fault("fcm", outage=True)
    for i in range(settings.JOBS_CIRCUIT_BREAKER["failure_threshold"]):
        deliver(submit(channel="push", to=f"device-token-warm-{i:04d}"))
    state = CircuitBreaker("fcm").state()
    assert state["state"] == OPEN

    notification = deliver(submit(channel="push", to="device-token-skipped-0001"))

    assert notification.status == "failed"
    assert notification.attempts == 0
    assert "circuit open" in notification.last_error
    cooldown = settings.JOBS_CIRCUIT_BREAKER["cooldown_seconds"]
    probe_allowed_at = datetime.fromtimestamp(state["opened_at_ms"] / 1000 + cooldown, UTC)
    assert notification.next_attempt_at >= probe_allowed_at - timedelta(milliseconds=50), "it waits out the cool-down"


def test_a_rate_limit_does_not_open_the_breaker(ledger):
    ledger.set_fault("fcm", retry_after=1)
    for i in range(settings.JOBS_CIRCUIT_BREAKER["failure_threshold"] + 1):
        deliver(submit(channel="push", to=f"device-token-limited-{i:04d}"))
    assert CircuitBreaker("fcm").state()["state"] == "closed"


def test_without_a_token_under_the_global_rate_it_waits_without_using_an_attempt(ledger, settings):
    from jobs.ratelimit import rate_limiter_for

    settings.JOBS_RATE_LIMITS = {"fcm": {"rate_per_second": 0.2, "burst": 1}}
    rate_limiter_for("fcm").reset()
    before = timezone.now()

    first = deliver(submit(channel="push", to="device-token-rate-0001"))
    second = deliver(submit(channel="push", to="device-token-rate-0002"))

    assert first.status == "sent"
    assert (second.status, second.attempts) == ("failed", 0)
    assert "global rate limit" in second.last_error
    assert second.next_attempt_at >= before + timedelta(seconds=3)
    assert len(ledger.entries(provider="fcm")) == 1
    rate_limiter_for("fcm").reset()


def test_a_provider_429_slows_every_worker_down(ledger, settings):
    from jobs.ratelimit import rate_limiter_for

    settings.JOBS_RATE_LIMITS = {"fcm": {"rate_per_second": 100}}
    limiter = rate_limiter_for("fcm")
    limiter.reset()
    ledger.set_fault("fcm", retry_after=3)

    deliver(submit(channel="push", to="device-token-limited-0001"))

    assert rate_limiter_for("fcm").acquire(1) > 1.5, "another worker's next token waits out the Retry-After"
    limiter.reset()

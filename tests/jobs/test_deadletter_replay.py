"""Replaying dead letters: a fresh attempt count and time budget, a wait (not a second death) behind open
breakers, task-level letters republished, and letters that cannot be replayed saying why."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from jobs.breaker import CircuitBreaker
from jobs.deadletters import deadletter_record, deadletter_replay, deadletters_replay_many
from jobs.models import DeadLetter
from notifications.models import Notification
from tests.support.deadletters import make_dead_letter
from tests.support.sending import deliver

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("closed_breakers")]
LIST_URL = "/admin/jobs/deadletter/"


def old_dead_letter() -> tuple[Notification, DeadLetter]:
    """A transactional e-mail that died long ago: its time budget ran out hours before the replay."""
    notification, letter = make_dead_letter(channel="email", provider="postmark", attempts=3)
    Notification.objects.filter(pk=notification.pk).update(created_at=timezone.now() - timedelta(hours=3))
    return notification, letter


def test_a_replayed_dead_letter_starts_a_fresh_attempt_count_and_time_budget(ledger):
    notification, letter = old_dead_letter()
    assert deadletter_replay(dead_letter=letter)
    ledger.set_fault("postmark", error_rate=1.0, status=500)
    ledger.set_fault("smtp", outage=True)

    notification = deliver(notification)

    assert (notification.status, notification.attempts) == ("failed", 1), "retried, not dead again"
    ledger.clear_faults()
    Notification.objects.filter(pk=notification.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert deliver(notification).status == "sent"


def test_a_replay_while_every_breaker_is_open_waits_for_the_breakers(ledger):
    notification, letter = old_dead_letter()
    for provider in ("postmark", "smtp"):
        for _ in range(settings.JOBS_CIRCUIT_BREAKER["failure_threshold"]):
            CircuitBreaker(provider).record_failure("down")
    assert deadletter_replay(dead_letter=letter)

    notification = deliver(notification)

    assert (notification.status, notification.attempts) == ("failed", 0), "it waits; nobody was called"
    assert "circuit open" in notification.last_error
    assert not DeadLetter.objects.filter(subject_id=str(notification.pk), status="open").exists()


def test_a_task_level_dead_letter_is_replayed_by_publishing_its_task_again(django_capture_on_commit_callbacks):
    notification, _ = make_dead_letter(channel="email", provider="postmark")
    Notification.objects.filter(pk=notification.pk).update(status="queued")
    letter = deadletter_record(
        job_name="notifications.deliver",
        arguments={"args": [str(notification.pk)], "kwargs": {}},
        error=ValueError("the worker could not read its message"),
        attempts=1,
        queue="transactional.email",
    )

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        outcome = deadletters_replay_many(ids=[letter.pk])

    assert outcome.done == [letter.pk] and not outcome.failed
    assert len(callbacks) == 1, "its task is published again with the arguments it failed with"
    assert DeadLetter.objects.get(pk=letter.pk).status == "replayed"


def test_a_dead_letter_that_cannot_be_replayed_says_why_and_stays_open(admin_client):
    gone = deadletter_record(
        job_name="billing.sync_invoice", arguments={"args": [7]}, error="no such job any more", attempts=1
    )
    orphan_of, orphan = make_dead_letter()
    Notification.objects.filter(pk=orphan_of.pk).delete()

    response = admin_client.post(
        LIST_URL,
        {"action": "replay_selected", "_selected_action": [str(gone.pk), str(orphan.pk)], "index": "0"},
        follow=True,
    )

    assert response.status_code == 200
    text = " ".join(str(m) for m in response.context["messages"])
    assert "2 not replayable" in text and "billing.sync_invoice" in text and "no longer exists" in text
    assert set(DeadLetter.objects.filter(pk__in=[gone.pk, orphan.pk]).values_list("status", flat=True)) == {"open"}
    page = admin_client.get(f"{LIST_URL}{gone.pk}/change/")
    assert page.status_code == 200
    assert "no: no task named" in page.content.decode()

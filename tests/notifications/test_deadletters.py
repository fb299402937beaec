"""The notification domain's dead letters on the runtime's table: a replay keeps the idempotency key, starts a fresh
attempt count and time budget, waits behind open breakers, and delivers once through real workers; the admin
links the notification and shows the providers' breakers."""

import io
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from harness.waiting import wait_until
from jobs import admin as jobs_admin
from jobs import deadletters
from jobs.breaker import CircuitBreaker
from jobs.deadletters import deadletter_replay
from jobs.models import DeadLetter
from notifications.models import Notification
from tests.support.deadletters import make_dead_letter
from tests.support.sending import deliver

pytestmark = pytest.mark.django_db
LIST_URL = "/admin/jobs/deadletter/"


def dead_letter(
    *, channel: str = "sms", priority: str = "transactional", provider: str = "twilio", attempts: int = 3
) -> tuple[Notification, DeadLetter]:
    return make_dead_letter(channel=channel, priority=priority, provider=provider, attempts=attempts)


def action(name: str, *ids: int, **extra) -> dict:
    return {"action": name, "_selected_action": [str(pk) for pk in ids], "index": "0", **extra}


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("deadletters", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.fixture
def operator(django_user_model):
    user = django_user_model.objects.create_user(username="oncall", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="replay_deadletter"))
    return user


def test_replay_selected_requeues_the_notification_with_its_idempotency_key(
    admin_client, admin_user, django_capture_on_commit_callbacks
):
    notification, letter = dead_letter()
    assert (notification.status, notification.attempts) == ("dead", 3)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = admin_client.post(LIST_URL, action("replay_selected", letter.pk), follow=True)

    letter.refresh_from_db()
    assert (letter.status, letter.resolved_by) == ("replayed", admin_user)
    assert letter.resolved_at is not None
    replayed = Notification.objects.get(pk=notification.pk)
    assert (replayed.status, replayed.attempts) == ("queued", 0)
    assert replayed.idempotency_key == notification.idempotency_key
    assert len(callbacks) == 1  # the publish to the notification's queue, after commit
    entry = LogEntry.objects.get(object_id=str(letter.pk))
    assert (entry.user, entry.change_message) == (admin_user, "Replayed")
    assert "Replayed 1 dead letter(s)." in response.content.decode()


def test_the_list_links_the_notification_and_shows_channel_and_priority(admin_client):
    notification, _ = dead_letter(channel="email", priority="security", provider="postmark")
    page = admin_client.get(LIST_URL).content.decode()
    assert f'href="/admin/notifications/notification/{notification.pk}/change/"' in page
    assert '<td class="field-channel">email</td>' in page
    assert '<td class="field-priority">security</td>' in page


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_background_replay_on_real_workers_delivers_once_with_the_original_keys(
    workers, ledger, admin_client, admin_user, monkeypatch
):
    monkeypatch.setattr(jobs_admin, "REPLAY_INLINE_LIMIT", 2)
    monkeypatch.setattr(deadletters, "BULK_CHUNK_SIZE", 2)
    # One transaction: the publish of notification_send happens after the row is dead, so no worker sends it.
    with transaction.atomic():
        notifications = [dead_letter(channel="sms")[0] for _ in range(3)]

    response = admin_client.post(f"{LIST_URL}?channel=sms", action("replay_all_matching"), follow=True)
    assert "in the background in 2 batch(es)" in response.content.decode()

    ids = [n.pk for n in notifications]
    wait_until(lambda: Notification.objects.filter(pk__in=ids, status="sent").count() == len(ids), timeout=30)
    assert set(Notification.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"sent"}
    for notification in notifications:
        assert len(ledger.entries(idempotency_key=notification.idempotency_key)) == 1
    letters = DeadLetter.objects.filter(subject_id__in=[str(pk) for pk in ids])
    assert {(letter.status, letter.resolved_by_id) for letter in letters} == {("replayed", admin_user.pk)}
    assert LogEntry.objects.filter(user=admin_user, change_message="Replayed").count() == 3


def test_replay_by_id_requeues_with_the_same_key_and_records_who(operator, django_capture_on_commit_callbacks):
    notification, letter = dead_letter()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        out = run("replay", "--id", str(letter.pk), "--user", "oncall")
    assert "Replayed 1 dead letter(s)." in out
    letter.refresh_from_db()
    assert (letter.status, letter.resolved_by) == ("replayed", operator)
    replayed = Notification.objects.get(pk=notification.pk)
    assert (replayed.status, replayed.attempts, replayed.idempotency_key) == (
        "queued",
        0,
        notification.idempotency_key,
    )
    assert len(callbacks) == 1
    assert LogEntry.objects.get(object_id=str(letter.pk)).change_message == "Replayed"


def old_dead_letter() -> tuple[Notification, DeadLetter]:
    """A transactional e-mail that died long ago: its time budget ran out hours before the replay."""
    notification, letter = make_dead_letter(channel="email", provider="postmark", attempts=3)
    Notification.objects.filter(pk=notification.pk).update(created_at=timezone.now() - timedelta(hours=3))
    return notification, letter


@pytest.mark.usefixtures("closed_breakers")
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


@pytest.mark.usefixtures("closed_breakers")
def test_a_replay_while_every_breaker_is_open_waits_for_the_breakers(ledger):
    notification, letter = old_dead_letter()
    for provider in ("postmark", "smtp"):
        for _ in range(settings.JOBS_CIRCUIT_BREAKER["failure_threshold"]):
            CircuitBreaker(provider).record_failure("down")
    assert deadletter_replay(dead_letter=letter)

    notification = deliver(notification)

    assert (notification.status, notification.attempts) == ("failed", 0), "it waits; nobody was called"
    assert "circuit open" in notification.last_error


def test_the_breaker_admin_lists_every_providers_breaker_before_it_ever_trips(admin_client):
    response = admin_client.get("/admin/jobs/breakertransition/")
    states = {state.name: state for state in response.context["breaker_states"]}
    assert {"postmark", "smtp", "twilio", "vonage", "fcm"} <= set(states)

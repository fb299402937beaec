"""The dead-letter admin on a job that is not a notification (a chore): inspect masked, replay, discard with a
reason, permissions."""

import uuid

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission

from harness.waiting import wait_until
from jobs import admin as jobs_admin
from jobs import deadletters
from jobs.breaker import BreakerConfig, CircuitBreaker
from jobs.models import DeadLetter
from jobs.tasks import deadletters_replay_task
from settings.celery_app import app
from tests.jobs.chores.models import Chore
from tests.jobs.chores.tasks import PARTNER, make_dead_chore

pytestmark = pytest.mark.django_db
LIST_URL = "/admin/jobs/deadletter/"


ADDRESSES = {"email": "ada@example.com", "sms": "+14155550199", "push": "fGzA1b2c3d4e5f6g7h8:APA91bHxToken"}


def dead_letter(
    *, channel: str = "sms", priority: str = "transactional", provider: str = "twilio", attempts: int = 3
) -> tuple[Chore, DeadLetter]:
    """A chore (a job that is not a notification) that died on `<priority>.<channel>` calling `provider`."""
    return make_dead_chore(
        queue=f"{priority}.{channel}", dependency=provider, owner=ADDRESSES[channel], attempts=attempts
    )


def action(name: str, *ids: int, **extra) -> dict:
    return {"action": name, "_selected_action": [str(pk) for pk in ids], "index": "0", **extra}


def listed(response) -> set[int]:
    return {row.pk for row in response.context["cl"].queryset}


@pytest.fixture
def staff_client(client, django_user_model):
    """A staff user who may look at dead letters but not act on them."""
    user = django_user_model.objects.create_user(username="viewer", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_deadletter"))
    client.force_login(user)
    return client


def test_replay_selected_skips_what_is_no_longer_open(admin_client):
    _, letter = dead_letter()
    admin_client.post(LIST_URL, action("replay_selected", letter.pk))
    response = admin_client.post(LIST_URL, action("replay_selected", letter.pk), follow=True)
    assert "Replayed 0 dead letter(s); 1 skipped (not open)." in response.content.decode()
    assert LogEntry.objects.filter(object_id=str(letter.pk)).count() == 1


def test_discard_asks_for_a_reason_and_records_it(admin_client, admin_user):
    chore, letter = dead_letter()

    confirmation = admin_client.post(LIST_URL, action("discard_selected", letter.pk))
    assert confirmation.status_code == 200
    assert "Discard 1 open dead letter?" in confirmation.content.decode()

    refused = admin_client.post(LIST_URL, action("discard_selected", letter.pk, post="yes", reason="  "))
    assert refused.status_code == 200
    assert "Give a reason" in refused.content.decode()
    letter.refresh_from_db()
    assert letter.status == "open"

    done = admin_client.post(
        LIST_URL, action("discard_selected", letter.pk, post="yes", reason="recipient closed the account")
    )
    assert done.status_code == 302
    letter.refresh_from_db()
    assert (letter.status, letter.resolution_note, letter.resolved_by) == (
        "discarded",
        "recipient closed the account",
        admin_user,
    )
    assert LogEntry.objects.get(object_id=str(letter.pk)).change_message == "Discarded: recipient closed the account"
    assert Chore.objects.get(pk=chore.pk).status == "dead"


def test_staff_without_the_permission_sees_the_list_but_no_actions(staff_client):
    _, letter = dead_letter()
    response = staff_client.get(LIST_URL)
    assert response.status_code == 200
    assert listed(response) == {letter.pk}
    assert response.context["action_form"] is None
    assert "replay_selected" not in response.content.decode()


@pytest.mark.parametrize("name", ["replay_selected", "replay_all_matching", "discard_selected"])
def test_a_forged_post_without_the_permission_changes_nothing(staff_client, name):
    chore, letter = dead_letter()
    confirmed = {"post": "yes", "reason": "forged"}
    staff_client.post(LIST_URL, action(name, letter.pk, **confirmed))
    staff_client.post(LIST_URL, {k: v for k, v in action(name, letter.pk, **confirmed).items() if k != "index"})
    staff_client.post(LIST_URL, action(name, **confirmed))
    letter.refresh_from_db()
    assert (letter.status, letter.resolved_by) == ("open", None)
    assert Chore.objects.get(pk=chore.pk).status == "dead"
    assert not LogEntry.objects.exists()


def test_the_replay_permission_alone_lets_staff_replay(staff_client, django_user_model):
    viewer = django_user_model.objects.get(username="viewer")
    viewer.user_permissions.add(Permission.objects.get(codename="replay_deadletter"))
    _, letter = dead_letter()
    staff_client.post(LIST_URL, action("replay_selected", letter.pk))
    letter.refresh_from_db()
    assert (letter.status, letter.resolved_by) == ("replayed", viewer)


def test_filters_by_queue_facets_dependency_and_status_narrow_the_list(admin_client):
    _, sms = dead_letter(channel="sms", priority="transactional", provider="twilio")
    _, email = dead_letter(channel="email", priority="security", provider="postmark")
    _, push = dead_letter(channel="push", priority="marketing", provider="fcm")
    admin_client.post(LIST_URL, action("replay_selected", push.pk))

    assert listed(admin_client.get(LIST_URL)) == {sms.pk, email.pk, push.pk}
    assert listed(admin_client.get(LIST_URL, {"channel": "email"})) == {email.pk}
    assert listed(admin_client.get(LIST_URL, {"priority": "transactional"})) == {sms.pk}
    assert listed(admin_client.get(LIST_URL, {"dependency": "fcm"})) == {push.pk}
    assert listed(admin_client.get(LIST_URL, {"status__exact": "open"})) == {sms.pk, email.pk}
    assert listed(admin_client.get(LIST_URL, {"channel": "sms", "status__exact": "replayed"})) == set()


def test_search_finds_a_dead_letter_by_its_subject_id(admin_client):
    chore, letter = dead_letter()
    dead_letter(channel="email", provider="postmark")
    assert listed(admin_client.get(LIST_URL, {"q": str(chore.pk)[:8]})) == {letter.pk}


def test_the_detail_page_masks_personal_data_and_shows_the_traceback(admin_client):
    _, letter = dead_letter(channel="email", provider="postmark")
    page = admin_client.get(f"{LIST_URL}{letter.pk}/change/").content.decode()
    assert "ada@example.com" not in page
    assert "a***@example.com" in page
    assert "<pre>Traceback (most recent call last):" in page
    assert "PermanentError: invalid recipient a***@example.com" in page


def test_nobody_can_add_edit_or_delete_dead_letters(admin_client):
    _, letter = dead_letter()
    assert admin_client.get(f"{LIST_URL}add/").status_code == 403
    admin_client.post(f"{LIST_URL}{letter.pk}/change/", {"status": "discarded", "message": "edited"})
    assert admin_client.post(f"{LIST_URL}{letter.pk}/delete/", {"post": "yes"}).status_code == 403
    letter.refresh_from_db()
    assert (letter.status, letter.message) == ("open", "invalid recipient +14155550199")


def test_replay_everything_matching_runs_inline_under_the_limit_without_any_row_ticked(admin_client):
    _, sms = dead_letter(channel="sms")
    _, email = dead_letter(channel="email", provider="postmark")
    response = admin_client.post(f"{LIST_URL}?channel=sms", action("replay_all_matching"), follow=True)
    assert "Replayed 1 dead letter(s)." in response.content.decode()
    sms.refresh_from_db()
    email.refresh_from_db()
    assert (sms.status, email.status) == ("replayed", "open")


def test_replay_everything_matching_ignores_the_ticked_rows(admin_client):
    _, sms = dead_letter(channel="sms")
    _, email = dead_letter(channel="email", provider="postmark")
    admin_client.post(f"{LIST_URL}?dependency=twilio", action("replay_all_matching", email.pk))
    sms.refresh_from_db()
    email.refresh_from_db()
    assert (sms.status, email.status) == ("replayed", "open")


def test_replay_everything_matching_above_the_limit_replays_in_background_batches(
    admin_client, admin_user, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(jobs_admin, "REPLAY_INLINE_LIMIT", 2)
    monkeypatch.setattr(deadletters, "BULK_CHUNK_SIZE", 2)
    # Eager: each published batch runs in this process, on this test's transaction, through the real task.
    monkeypatch.setattr(app.conf, "task_always_eager", True)
    monkeypatch.setattr(app.conf, "task_eager_propagates", True)
    sms = [dead_letter(channel="sms")[1] for _ in range(3)]
    _, email = dead_letter(channel="email", provider="postmark")

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = admin_client.post(f"{LIST_URL}?channel=sms", action("replay_all_matching"), follow=True)

    assert "Replaying 3 open dead letter(s) in the background in 2 batch(es)" in response.content.decode()
    assert set(DeadLetter.objects.filter(status="replayed").values_list("pk", flat=True)) == {d.pk for d in sms}
    assert DeadLetter.objects.get(pk=email.pk).status == "open"
    assert len(callbacks) == 3
    assert set(LogEntry.objects.filter(user=admin_user).values_list("object_id", flat=True)) == {str(d.pk) for d in sms}


def test_the_background_task_replays_open_ones_and_skips_the_rest(admin_user):
    (_, first), (_, second) = dead_letter(), dead_letter(channel="email", provider="postmark")
    deadletters.deadletter_discard(dead_letter=second, reason="not wanted")

    deadletters_replay_task([first.pk, second.pk, 999_999], admin_user.pk)
    deadletters_replay_task([first.pk], admin_user.pk)  # a redelivered batch

    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, first.resolved_by) == ("replayed", admin_user)
    assert second.status == "discarded"
    assert LogEntry.objects.filter(object_id=str(first.pk)).count() == 1


def test_breaker_admin_shows_each_breakers_current_state_above_its_transitions(admin_client):
    name = f"test-{uuid.uuid4().hex[:8]}"
    breaker = CircuitBreaker(name, config=BreakerConfig(failure_threshold=1))
    try:
        breaker.record_failure("HTTP 503")
        response = admin_client.get("/admin/jobs/breakertransition/")
        states = {state.name: state for state in response.context["breaker_states"]}
        page = response.content.decode()
    finally:
        breaker.reset()
    assert response.status_code == 200
    assert (states[name].state, states[name].failures) == ("open", 1)
    assert states[name].open_since is not None
    assert PARTNER in states and states[PARTNER].state == "closed"  # registered by its app, never tripped
    assert '<tr class="breaker-open">' in page
    assert "HTTP 503" in page  # the transition row itself
    filtered = admin_client.get("/admin/jobs/breakertransition/", {"to_state": "closed"})
    assert not [row for row in filtered.context["cl"].queryset if row.breaker == name]


def test_replay_selected_requeues_the_job_and_records_who(admin_client, admin_user, django_capture_on_commit_callbacks):
    chore, letter = dead_letter()
    assert (chore.status, chore.attempts) == ("dead", 3)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = admin_client.post(LIST_URL, action("replay_selected", letter.pk), follow=True)

    letter.refresh_from_db()
    assert (letter.status, letter.resolved_by) == ("replayed", admin_user)
    assert letter.resolved_at is not None
    replayed = Chore.objects.get(pk=chore.pk)
    assert (replayed.status, replayed.attempts) == ("queued", 0), "its app's replayer ran"
    assert len(callbacks) == 1  # the publish to the job's queue, after commit
    entry = LogEntry.objects.get(object_id=str(letter.pk))
    assert (entry.user, entry.change_message) == (admin_user, "Replayed")
    assert "Replayed 1 dead letter(s)." in response.content.decode()


def test_the_list_shows_the_queue_facets_and_the_subject(admin_client):
    chore, _ = dead_letter(channel="email", priority="security", provider="postmark")
    page = admin_client.get(LIST_URL).content.decode()
    assert str(chore.pk) in page
    assert '<td class="field-channel">email</td>' in page
    assert '<td class="field-priority">security</td>' in page
    assert '<td class="field-dependency">postmark</td>' in page


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_background_replay_on_real_workers_does_each_job_once(workers, admin_client, admin_user, monkeypatch):
    monkeypatch.setattr(jobs_admin, "REPLAY_INLINE_LIMIT", 2)
    monkeypatch.setattr(deadletters, "BULK_CHUNK_SIZE", 2)
    chores = [dead_letter(channel="sms")[0] for _ in range(3)]

    response = admin_client.post(f"{LIST_URL}?channel=sms", action("replay_all_matching"), follow=True)
    assert "in the background in 2 batch(es)" in response.content.decode()

    ids = [c.pk for c in chores]
    wait_until(lambda: Chore.objects.filter(pk__in=ids, status="done").count() == len(ids), timeout=30)
    letters = DeadLetter.objects.filter(subject_id__in=[str(pk) for pk in ids])
    assert {(letter.status, letter.resolved_by_id) for letter in letters} == {("replayed", admin_user.pk)}
    assert LogEntry.objects.filter(user=admin_user, change_message="Replayed").count() == 3

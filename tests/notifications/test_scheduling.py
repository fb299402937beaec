"""Send later and cancel before it goes: a send_at held in PostgreSQL until the release publishes it, a cancel by id
or by key that wins against the worker's claim or answers 409, scheduled campaigns, and the sweep that skips a
cancelled campaign's unsent rows many batches at a time."""

import base64
import json
import uuid
from datetime import timedelta

import pytest
from django.db.models import Count
from django.utils import timezone

from jobs.clock import database_now
from jobs.redis import QueueHead
from notifications.campaigns import (
    campaign_cancel,
    campaign_cancel_sweep,
    campaign_create,
    campaign_start,
    campaigns_start_due,
)
from notifications.counting import campaign_batch_recount, campaign_notifications
from notifications.delivery import notification_claim
from notifications.models import Campaign, CampaignBatch, CampaignSegment, Notification, NotificationEvent, Recipient
from notifications.recovery import campaign_relay
from notifications.sending import record_retry, record_sent
from notifications.services import (
    NotCancellable,
    notification_cancel,
    notification_send,
    notifications_cancel_by_key,
    notifications_release_due,
)
from settings.topology import FANOUT_QUEUE
from tests.support.api import make_sender
from tests.support.sending import NEWS, ORDER_SHIPPED, deliver, fanned_out_campaign

pytestmark = pytest.mark.django_db


def scheduled(seconds: float, **fields) -> Notification:
    notification, _ = notification_send(
        priority=fields.pop("priority", "transactional"),
        channel="email",
        to=fields.pop("to", "ada@example.com"),
        send_at=timezone.now() + timedelta(seconds=seconds),
        **ORDER_SHIPPED,
        **fields,
    )
    return notification


def make_due(*notifications: Notification) -> None:
    """Their send_at has come (moved back, rather than the test waiting for it)."""
    Notification.objects.filter(pk__in=[n.pk for n in notifications]).update(
        send_at=timezone.now() - timedelta(milliseconds=1)
    )


def test_a_scheduled_notification_waits_in_postgresql_and_is_sent_once_due(ledger, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as published:
        notification = scheduled(3600)
    assert notification.status == "scheduled" and published == [], "nothing goes to the broker before its time"

    assert notifications_release_due() == 0
    assert deliver(notification).status == "scheduled", "a message naming it before its time claims nothing"

    make_due(notification)
    with django_capture_on_commit_callbacks(execute=False) as published:
        assert notifications_release_due() == 1
    assert len(published) == 1
    assert notifications_release_due() == 0, "released once"
    notification = deliver(notification)
    assert notification.status == "sent"
    assert notification.sent_at >= notification.send_at
    assert len(ledger.entries(idempotency_key=notification.idempotency_key)) == 1


def test_a_send_at_in_the_past_sends_at_once(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as published:
        notification = scheduled(-60)
    assert notification.status == "queued" and len(published) == 1


def test_security_notifications_are_released_first():
    marketing = scheduled(60, priority="marketing", to="m@example.com")
    security = scheduled(60, priority="security", to="s@example.com")
    make_due(marketing, security)
    assert notifications_release_due(limit=2) == 2
    assert set(Notification.objects.filter(pk__in=[marketing.pk, security.pk]).values_list("status", flat=True)) == {
        "queued"
    }


def test_a_scheduled_notifications_retry_budget_runs_from_its_send_at_not_its_submit():
    notification = scheduled(3600, priority="security")
    # Submitted a day ago for now: the security budget (two minutes) must not be spent already.
    Notification.objects.filter(pk=notification.pk).update(created_at=timezone.now() - timedelta(days=1))
    make_due(notification)
    notifications_release_due()
    (row,) = notification_claim(notification_ids=[str(notification.pk)])
    record_retry(row, "postmark: 503", provider="postmark", retry_after=None)
    row.refresh_from_db()
    assert row.status == "failed", row.last_error


def test_cancel_before_the_claim_means_nothing_is_sent(ledger):
    notification = scheduled(3600, cancellation_key="order-7")
    cancelled = notification_cancel(notification_id=notification.pk, reason="customer changed their mind")
    assert cancelled.status == "cancelled"

    make_due(notification)
    assert notifications_release_due() == 0
    assert deliver(notification).status == "cancelled"
    assert ledger.entries() == []
    kinds = list(NotificationEvent.objects.filter(notification=notification).values_list("kind", flat=True))
    assert kinds == ["cancelled"]


def test_cancel_after_the_claim_is_refused_with_the_current_status():
    notification = scheduled(-1)
    notification_claim(notification_ids=[str(notification.pk)])  # a worker took it
    with pytest.raises(NotCancellable) as refused:
        notification_cancel(notification_id=notification.pk)
    assert refused.value.notification.status == "sending"
    assert Notification.objects.get(pk=notification.pk).status == "sending"


def test_a_claim_after_the_cancel_takes_nothing():
    notification = scheduled(-1)  # queued, its message on the way
    notification_cancel(notification_id=notification.pk)
    assert notification_claim(notification_ids=[str(notification.pk)]) == []


def test_cancel_by_key_cancels_every_untaken_notification_and_names_the_rest():
    rows = [scheduled(3600, to=f"k{i}@example.com", cancellation_key="trip-42") for i in range(3)]
    other = scheduled(3600, to="other@example.com", cancellation_key="trip-43")
    make_due(rows[0])
    notifications_release_due()
    notification_claim(notification_ids=[str(rows[0].pk)])

    result = notifications_cancel_by_key(cancellation_key="trip-42")

    assert sorted(result["cancelled"]) == sorted(str(r.pk) for r in rows[1:])
    assert result["too_late"] == {str(rows[0].pk): "sending"}
    assert Notification.objects.get(pk=other.pk).status == "scheduled"


def test_the_api_schedules_and_cancels_and_answers_409_once_taken(api, api_user, django_user_model):
    send_at = (timezone.now() + timedelta(hours=1)).isoformat()
    body = {"priority": "transactional", "channel": "email", "to": "api@example.com", **ORDER_SHIPPED}
    response = api.post("/api/v1/notifications", {**body, "send_at": send_at, "cancellation_key": "basket-1"})
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "scheduled"
    notification_id = response.json()["id"]
    detail = api.get(f"/api/v1/notifications/{notification_id}").json()
    assert detail["send_at"] is not None and detail["cancellation_key"] == "basket-1"

    response = api.post(f"/api/v1/notifications/{notification_id}/cancel", {})
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled"
    response = api.post(f"/api/v1/notifications/{notification_id}/cancel", {})
    assert response.status_code == 409
    assert response.json()["status"] == "cancelled"

    taken = api.post("/api/v1/notifications", {**body, "to": "taken@example.com", "cancellation_key": "basket-2"})
    notification_claim(notification_ids=[taken.json()["id"]])
    response = api.post(f"/api/v1/notifications/{taken.json()['id']}/cancel", {})
    assert response.status_code == 409 and response.json()["status"] == "sending"

    response = api.post("/api/v1/notifications/cancel", {"cancellation_key": "basket-2"})
    assert response.status_code == 200
    assert response.json() == {"cancelled": [], "too_late": {taken.json()["id"]: "sending"}}


def test_another_users_notification_cannot_be_cancelled(api, django_user_model):
    other, _ = make_sender(django_user_model, "someone-else")
    notification, _ = notification_send(
        priority="transactional",
        channel="email",
        to="theirs@example.com",
        send_at=timezone.now() + timedelta(hours=1),
        cancellation_key="shared-key",
        created_by=other,
        **ORDER_SHIPPED,
    )
    assert api.post(f"/api/v1/notifications/{notification.pk}/cancel", {}).status_code == 404
    assert api.post("/api/v1/notifications/cancel", {"cancellation_key": "shared-key"}).json()["cancelled"] == []
    assert Notification.objects.get(pk=notification.pk).status == "scheduled"


@pytest.mark.parametrize(
    ("send_at", "reason"),
    [
        ("tomorrow", "not an ISO 8601 date and time"),
        ("2027-01-31T09:00:00", "needs a time zone"),
        ("2099-01-31T09:00:00Z", "at most 365 days ahead"),
    ],
)
def test_a_bad_send_at_is_refused_with_the_reason_and_stores_nothing(api, send_at, reason):
    body = {"priority": "transactional", "channel": "email", "to": "bad@example.com", "send_at": send_at}
    response = api.post("/api/v1/notifications", {**body, **ORDER_SHIPPED})
    assert response.status_code == 400, response.content
    assert reason in response.json()["errors"]["send_at"]
    assert not Notification.objects.exists()


def test_a_bad_cancellation_key_is_refused(api):
    body = {"priority": "transactional", "channel": "email", "to": "bad@example.com", "cancellation_key": "two words"}
    response = api.post("/api/v1/notifications", {**body, **ORDER_SHIPPED})
    assert response.status_code == 400
    assert "cancellation_key" in response.json()["errors"]
    assert not Notification.objects.exists()


def test_a_scheduled_campaign_starts_when_due_and_a_cancelled_one_sends_nothing():
    Recipient.objects.bulk_create(
        [Recipient(email=f"sched{i}@example.com", email_marketing_consent=True, tags=["sched"]) for i in range(5)]
    )
    later = campaign_create(name="later", template="newsletter", channel="email", context=NEWS, audience_tag="sched")
    never = campaign_create(name="never", template="newsletter", channel="email", context=NEWS, audience_tag="sched")
    for campaign in (later, never):
        campaign = campaign_start(campaign_id=campaign.pk, send_at=timezone.now() + timedelta(hours=1))
        assert campaign.status == "scheduled"
    campaign_cancel(campaign_id=never.pk)
    assert campaigns_start_due() == 0
    assert not CampaignSegment.objects.exists()

    Campaign.objects.filter(pk__in=[later.pk, never.pk]).update(send_at=timezone.now() - timedelta(seconds=1))
    assert campaigns_start_due() == 1
    assert Campaign.objects.get(pk=later.pk).status == "running"
    never = Campaign.objects.get(pk=never.pk)
    assert never.status == "cancelled" and never.started_at is None
    assert not CampaignSegment.objects.filter(campaign=never).exists()


def test_a_cancel_counts_every_unsent_row_at_once_and_the_sweep_rewrites_them_many_batches_at_a_time(settings):
    settings.CAMPAIGN_BATCH_SIZE = 10
    settings.CAMPAIGN_SWEEP_BATCHES = 4
    campaign = fanned_out_campaign("sweep", count=95)
    rows = list(campaign_notifications(campaign).order_by("pk"))
    # Some rows are already sent; one waits for a retry on the single-send path; one is in a worker's hands.
    campaign_notifications(campaign).filter(pk__in=[r.pk for r in rows[:12]]).update(status="sent")
    Notification.objects.filter(pk=rows[50].pk).update(status="failed", next_attempt_at=timezone.now())
    token = uuid.uuid4()
    Notification.objects.filter(pk=rows[60].pk).update(status="sending", claim_token=token)
    for batch in CampaignBatch.objects.filter(campaign=campaign):
        campaign_batch_recount(batch_id=batch.pk)

    campaign = campaign_cancel(campaign_id=campaign.pk)

    # Counted at once, by the batches' counters: the held row too, until its outcome is recorded.
    assert (campaign.sent_count, campaign.dead_count, campaign.skipped_count) == (12, 0, 83)
    assert Notification.objects.get(pk=rows[50].pk).status == "skipped", "the single-send path's row is written"
    assert set(CampaignBatch.objects.filter(campaign=campaign).values_list("status", flat=True)) == {"cancelled"}
    skipped_events = NotificationEvent.objects.filter(notification_id__in=[r.pk for r in rows], kind="skipped")
    assert not skipped_events.exists()
    assert campaign_cancel_sweep(campaign_id=campaign.pk) is True

    statuses = dict(campaign_notifications(campaign).values_list("status").annotate(n=Count("pk")))
    assert statuses == {"sent": 12, "skipped": 82, "sending": 1}
    assert set(CampaignBatch.objects.filter(campaign=campaign).values_list("status", flat=True)) == {"done"}
    assert not skipped_events.exists(), "no event per row: the cancel's log record is the campaign's one record"
    # The held row's call is accepted after all: its outcome recounts its batch, the campaign's split follows.
    held = Notification.objects.get(pk=rows[60].pk)
    record_sent([(held, "postmark", "msg-held")])
    campaign.refresh_from_db()
    assert (campaign.status, campaign.sent_count, campaign.skipped_count) == ("cancelled", 13, 82)
    assert sum(CampaignBatch.objects.filter(campaign=campaign).values_list("skipped_count", flat=True)) == 82


def test_the_relay_publishes_a_lost_sweep_again_and_closes_what_a_lost_close_left_open(
    broker, django_capture_on_commit_callbacks
):
    swept = fanned_out_campaign("lost-sweep", count=3)
    with django_capture_on_commit_callbacks(execute=False):
        campaign_cancel(campaign_id=swept.pk)  # its sweep's message is lost
    # Another whose cancel's process died between its commit and the close: its batches are still open.
    unclosed = fanned_out_campaign("lost-close", count=4)
    Campaign.objects.filter(pk=unclosed.pk).update(status="cancelled", finished_at=timezone.now())
    broker.delete(FANOUT_QUEUE)
    nothing_lost = QueueHead(depth=0, published_at=None)
    assert campaign_relay(queue_heads=lambda name: nothing_lost) == 0, "not before the grace"

    Campaign.objects.filter(pk=swept.pk).update(updated_at=timezone.now() - timedelta(minutes=5))
    CampaignBatch.objects.filter(campaign=unclosed).update(updated_at=timezone.now() - timedelta(minutes=5))
    Campaign.objects.filter(pk=unclosed.pk).update(finished_at=timezone.now() - timedelta(minutes=5))
    with django_capture_on_commit_callbacks(execute=True):
        # As the relay task calls it: with one reading of PostgreSQL's clock.
        assert campaign_relay(now=database_now(), queue_heads=lambda name: nothing_lost) == 2

    messages = [json.loads(m) for m in broker.lrange(FANOUT_QUEUE, 0, -1)]
    assert {m["headers"]["task"] for m in messages} == {"notifications.campaign_sweep"}
    assert sorted(json.loads(base64.b64decode(m["body"]))[0][0] for m in messages) == sorted([swept.pk, unclosed.pk])
    unclosed.refresh_from_db()
    assert (unclosed.skipped_count, unclosed.remaining_count) == (4, 0)
    assert set(CampaignBatch.objects.filter(campaign=unclosed).values_list("status", flat=True)) == {"cancelled"}


def test_a_campaign_row_cancelled_by_id_counts_as_skipped():
    campaign = fanned_out_campaign("one-row", count=3)
    row = campaign_notifications(campaign).first()
    notification_cancel(notification_id=row.pk)
    campaign.refresh_from_db()
    assert campaign.skipped_count == 1


def test_the_beat_tasks_run_as_beat_calls_them():
    """Thin shells, but each reads PostgreSQL's clock once and hands it on: run them as a worker would."""
    from notifications import tasks

    scheduled(-1)
    tasks.notification_relay_task()
    tasks.release_scheduled_task()
    tasks.prune_task()


def test_the_admin_cancels_what_no_worker_took_and_names_the_rest(admin_client):
    waiting = scheduled(3600, to="admin-waiting@example.com")
    taken = scheduled(-1, to="admin-taken@example.com")
    notification_claim(notification_ids=[str(taken.pk)])

    page = admin_client.post(
        "/admin/notifications/notification/",
        {"action": "cancel", "_selected_action": [str(waiting.pk), str(taken.pk)]},
        follow=True,
    ).content.decode()

    assert "Cancelled 1 notification(s)" in page
    assert f"{taken.pk} (sending)" in page
    assert Notification.objects.get(pk=waiting.pk).status == "cancelled"

"""Cancelling a running campaign: from the cancel on, every reader (the API, the admin, the campaign's progress,
retention) sees its unsent rows skipped and its counters final, before the sweep rewrites a single row; a worker
holding a batch or a row at that moment ends through its normal path and sends nothing more."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from harness.waiting import wait_until
from notifications import campaign_delivery
from notifications.campaigns import campaign_cancel, campaign_cancel_sweep
from notifications.counting import campaign_notifications, campaign_recount_for
from notifications.delivery import notification_claim
from notifications.models import BatchStatus, Campaign, CampaignBatch, Notification, NotificationEvent
from notifications.retention import retention_prune
from notifications.sending import record_retry
from tests.support.sending import deliver, fanned_out_campaign

pytestmark = pytest.mark.django_db
LIST = "/admin/notifications/notification/"


def shown(page) -> list[str]:
    return re.findall(r'name="_selected_action" value="([^"]+)"', page.content.decode())


def stored(campaign) -> dict[str, int]:
    statuses: dict[str, int] = {}
    for status in campaign_notifications(campaign).values_list("status", flat=True):
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


def test_right_after_a_cancel_the_api_the_admin_and_the_progress_show_every_unsent_row_skipped(
    api, api_user, admin_client
):
    api_user.is_staff = True  # campaign rows have no submitter: staff read them
    api_user.save()
    api_user.user_permissions.add(*Permission.objects.filter(codename="view_campaign"))
    campaign = fanned_out_campaign("readers", count=5)
    rows = list(campaign_notifications(campaign).order_by("pk"))
    Notification.objects.filter(pk=rows[0].pk).update(status="sent")
    campaign_recount_for(rows[0])  # as the worker that sent it did
    unsent = rows[1]

    campaign_cancel(campaign_id=campaign.pk)

    assert stored(campaign) == {"sent": 1, "scheduled": 4}, "nothing rewritten yet: the mark is logical"
    detail = api.get(f"/api/v1/notifications/{unsent.pk}").json()
    assert detail["status"] == "skipped"
    assert api.get(f"/api/v1/notifications/{unsent.pk}/events").json()["status"] == "skipped"
    assert api.get(f"/api/v1/notifications/{rows[0].pk}").json()["status"] == "sent"
    progress = api.get(f"/api/v1/campaigns/{campaign.pk}").json()
    assert (progress["sent"], progress["skipped"], progress["remaining"], progress["waiting"]) == (1, 4, 0, None)
    assert progress["percent_done"] == 100.0
    refused = api.post(f"/api/v1/notifications/{unsent.pk}/cancel", {})
    assert (refused.status_code, refused.json()["status"]) == (409, "skipped")

    term = f"q=campaign:{campaign.pk}"
    assert sorted(shown(admin_client.get(f"{LIST}?status__exact=skipped&{term}"))) == sorted(
        str(r.pk) for r in rows[1:]
    )
    assert shown(admin_client.get(f"{LIST}?status__exact=scheduled&{term}")) == []
    listed = admin_client.get(f"{LIST}?{term}").content.decode()
    assert listed.count(">skipped</span>") == 4 and listed.count(">scheduled</span>") == 0
    page = admin_client.get(f"{LIST}{unsent.pk}/change/").content.decode()
    assert ">skipped</span>" in page
    recipient_page = admin_client.get(f"/admin/notifications/recipient/{unsent.recipient_id}/change/").content.decode()
    assert "<td>skipped</td>" in recipient_page

    assert campaign_cancel_sweep(campaign_id=campaign.pk) is True
    assert stored(campaign) == {"sent": 1, "skipped": 4}
    assert api.get(f"/api/v1/notifications/{unsent.pk}").json()["status"] == "skipped"


def test_a_cancel_racing_workers_that_hold_batches_sends_nothing_more_and_the_counters_add_up(settings, ledger):
    settings.CAMPAIGN_BATCH_SIZE = 3
    campaign = fanned_out_campaign("race", count=9)
    first, second, third = CampaignBatch.objects.filter(campaign=campaign).order_by("first_recipient_id")
    # Two workers hold a batch each when the cancel comes; the third batch waits in its queue.
    handing_back = campaign_delivery._claim_batch(first.pk)
    deferring = campaign_delivery._claim_batch(second.pk)

    campaign = campaign_cancel(campaign_id=campaign.pk)

    assert (campaign.skipped_count, campaign.remaining_count) == (3, 6), "the held batches end through their path"
    assert CampaignBatch.objects.get(pk=third.pk).status == BatchStatus.CANCELLED
    assert set(campaign_notifications(campaign).with_shown_status().values_list("shown_status", flat=True)) == {
        "skipped"
    }
    # One finds the campaign cancelled before its next call; the other could call nobody and defers its batch, which
    # would wait for nothing: its rows are skipped there instead.
    campaign_delivery._run(handing_back)
    assert campaign_delivery._set_batch(deferring, BatchStatus.DEFERRED, wait=600, reason="postmark: circuit open")

    campaign.refresh_from_db()
    assert (campaign.sent_count, campaign.dead_count, campaign.skipped_count, campaign.remaining_count) == (0, 0, 9, 0)
    assert set(CampaignBatch.objects.filter(pk__in=[first.pk, second.pk]).values_list("status", flat=True)) == {"done"}
    assert ledger.entries() == []
    campaign_cancel_sweep(campaign_id=campaign.pk)
    assert stored(campaign) == {"skipped": 9}
    assert not NotificationEvent.objects.filter(notification_id__in=campaign_notifications(campaign).values("pk"))


def test_a_row_whose_call_failed_after_the_cancel_is_skipped_by_its_next_claim_never_sent(ledger):
    campaign = fanned_out_campaign("in-flight", count=2)
    row = campaign_notifications(campaign).order_by("pk").first()
    # On the single-send path (a retry) and claimed by a worker when the cancel comes.
    Notification.objects.filter(pk=row.pk).update(status="queued")
    (held,) = notification_claim(notification_ids=[str(row.pk)])
    campaign_cancel(campaign_id=campaign.pk)
    record_retry(held, "postmark: HTTP 500", provider="postmark", retry_after=None)  # its call failed meanwhile

    assert Notification.objects.with_shown_status().get(pk=row.pk).shown_status == "skipped"
    Notification.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())  # due again
    assert deliver(held).status == "skipped"
    assert ledger.entries() == []
    campaign.refresh_from_db()
    assert (campaign.skipped_count, campaign.remaining_count) == (2, 0)


def test_retention_treats_a_cancelled_campaigns_unsent_rows_as_final_before_the_sweep():
    campaign = fanned_out_campaign("pruned", count=3)
    campaign_cancel(campaign_id=campaign.pk)
    # Cancelled (finished) longer ago than the marketing keeping time: its partition goes.
    Campaign.objects.filter(pk=campaign.pk).update(finished_at=timezone.now() - timedelta(days=31))
    assert stored(campaign) == {"scheduled": 3}

    retention_prune()

    assert campaign_notifications(campaign).count() == 0


def test_a_segment_written_while_the_cancel_commits_closes_its_own_batches(
    monkeypatch, django_capture_on_commit_callbacks
):
    from notifications import campaigns
    from notifications.models import Campaign, CampaignSegment, Recipient

    Recipient.objects.bulk_create(
        [Recipient(email=f"late{i}@example.com", email_marketing_consent=True, tags=["late"]) for i in range(4)]
    )
    campaign = campaigns.campaign_create(
        name="late", template="newsletter", channel="email", context={"headline": "h", "body": "b"}, audience_tag="late"
    )
    campaigns.campaign_start(campaign_id=campaign.pk)
    write = campaigns._materialise

    def cancelled_meanwhile(*args):
        written = write(*args)
        # The cancel commits while the rows are written: its close cannot see this segment's batches yet.
        Campaign.objects.filter(pk=campaign.pk).update(status="cancelled")
        return written

    monkeypatch.setattr(campaigns, "_materialise", cancelled_meanwhile)
    (segment,) = CampaignSegment.objects.filter(campaign=campaign)
    with django_capture_on_commit_callbacks() as published:
        assert campaigns.campaign_fanout_segment(segment_id=segment.pk) == 4

    campaign.refresh_from_db()
    assert (campaign.materialized_count, campaign.skipped_count, campaign.remaining_count) == (4, 4, 0)
    assert set(CampaignBatch.objects.filter(campaign=campaign).values_list("status", flat=True)) == {"cancelled"}
    assert published == [], "no batch message for a closed batch"


def test_a_row_whose_outcome_was_unknown_at_the_cancel_is_asked_for_at_the_vendor_never_sent_again(ledger):
    campaign = fanned_out_campaign("doubt", count=2)
    accepted, refused = campaign_notifications(campaign).order_by("pk")
    Notification.objects.filter(pk__in=[accepted.pk, refused.pk]).update(status="queued")
    ledger.set_fault("postmark", latency_ms=4500)  # accepted after our timeout: the outcome is unknown
    assert deliver(accepted).outcome_unknown
    wait_until(lambda: ledger.entries(), timeout=10, what="the sandbox to accept it after our timeout")
    ledger.clear_faults()
    (held,) = notification_claim(notification_ids=[str(refused.pk)])
    record_retry(held, "postmark: timeout", provider="postmark", retry_after=None, outcome_unknown=True)  # never sent
    campaign_cancel(campaign_id=campaign.pk)

    # In doubt, neither is skipped yet for the readers; asked at the vendor, one was sent and the other is skipped.
    rows = Notification.objects.with_shown_status().filter(pk__in=[accepted.pk, refused.pk])
    assert set(rows.values_list("shown_status", flat=True)) == {"failed"}
    Notification.objects.filter(pk__in=[accepted.pk, refused.pk]).update(next_attempt_at=timezone.now())
    assert (deliver(accepted).status, deliver(refused).status) == ("sent", "skipped")
    assert len(ledger.entries()) == 1, "nothing sent again"
    campaign.refresh_from_db()
    assert (campaign.sent_count, campaign.skipped_count, campaign.remaining_count) == (1, 1, 0)

"""Why a campaign is not sending and until when (selectors.campaign_waiting), in the campaign list and the API:
quiet hours (until the first zone wakes, in how many zones), paused (and the worker's reason), a busy provider or
an open circuit, scheduled for its send_at."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.test import override_settings
from django.utils import timezone

from notifications import campaign_delivery
from notifications.campaign_delivery import campaign_batch_send
from notifications.campaigns import (
    campaign_cancel,
    campaign_create,
    campaign_fanout_segment,
    campaign_start,
)
from notifications.models import Campaign, CampaignBatch, CampaignSegment, Recipient
from notifications.selectors import campaign_waiting

pytestmark = pytest.mark.django_db
CAMPAIGNS = "/admin/notifications/campaign/"


def zone_at_local_hour(hour: int) -> str:
    """A fixed-offset zone where it is now `hour` o'clock (Etc/GMT signs are inverted)."""
    offset = (hour - datetime.now(UTC).hour + 12) % 24 - 12
    return f"Etc/GMT{-offset:+d}" if offset else "UTC"


def running_campaign(tag: str, zones: list[str]) -> Campaign:
    for i, zone in enumerate(zones):
        Recipient.objects.create(email=f"{tag}{i}@example.com", email_marketing_consent=True, timezone=zone, tags=[tag])
    campaign = campaign_create(
        name=tag, template="newsletter", channel="email", context={"headline": "h", "body": "b"}, audience_tag=tag
    )
    campaign_start(campaign_id=campaign.pk)
    for segment in CampaignSegment.objects.filter(campaign=campaign):
        campaign_fanout_segment(segment_id=segment.pk)
    return campaign


def test_a_campaign_deferred_by_quiet_hours_says_until_when_and_in_how_many_zones(admin_client):
    hour = datetime.now(UTC).hour
    # Quiet from two hours ago to two hours ahead, local time: zones at this hour and the next are both asleep.
    zones = [zone_at_local_hour(hour), zone_at_local_hour(hour + 1), zone_at_local_hour(hour + 1)]
    campaign = running_campaign("owls", zones)
    with override_settings(MARKETING_QUIET_HOURS=f"{(hour - 2) % 24}-{(hour + 2) % 24}"):
        (batch,) = CampaignBatch.objects.filter(campaign=campaign)
        campaign_batch_send(batch_id=batch.pk)
    batch.refresh_from_db()
    assert batch.status == "deferred" and batch.reason.startswith("quiet hours: ")
    wakes = batch.next_attempt_at.astimezone(UTC).strftime("%H:%M")

    why = campaign_waiting(Campaign.objects.get(pk=campaign.pk))

    assert re.fullmatch(rf"quiet hours until {wakes}(:\d\d)? UTC in 2 time zones", why), why
    assert why in admin_client.get(CAMPAIGNS).content.decode()


def test_the_campaign_api_says_why_it_is_not_sending(api, api_user):
    api_user.user_permissions.add(Permission.objects.get(codename="view_campaign"))
    campaign = Campaign.objects.create(
        name="held", template="newsletter", status="paused", last_error="cannot render: missing variable(s) body"
    )

    body = api.get(f"/api/v1/campaigns/{campaign.pk}").json()

    assert body["waiting"] == "paused by a worker: cannot render: missing variable(s) body"


def test_paused_and_scheduled_campaigns_say_so(admin_client):
    send_at = datetime(2031, 5, 4, 7, 30, tzinfo=UTC)
    paused = Campaign.objects.create(name="p", template="newsletter", status="paused")
    scheduled = Campaign.objects.create(name="s", template="newsletter", status="scheduled", send_at=send_at)
    done = Campaign.objects.create(name="d", template="newsletter", status="completed")

    assert campaign_waiting(paused) == "paused"
    assert campaign_waiting(scheduled) == "scheduled for 2031-05-04 07:30 UTC"
    assert campaign_waiting(done) is None
    page = admin_client.get(CAMPAIGNS).content.decode()
    assert "scheduled for 2031-05-04 07:30 UTC" in page


def test_a_campaign_held_by_a_busy_provider_or_an_open_circuit_says_until_when():
    campaign = Campaign.objects.create(name="busy", template="newsletter", status="running", materialized_count=1500)
    now = timezone.now()
    # What campaign_delivery writes when sending.send() could call nobody: the providers' answer, the due time.
    for first, reason, seconds in [
        (1, "postmark: global rate limit, next token in 0.40s", 3),
        (501, "postmark: global rate limit, next token in 0.40s", 5),
        (1001, "postmark: circuit open", 30),
    ]:
        CampaignBatch.objects.create(
            campaign=campaign, first_recipient_id=first, last_recipient_id=first + 499, size=500, status="deferred",
            reason=reason, next_attempt_at=now + timedelta(seconds=seconds),
        )  # fmt: skip
    CampaignBatch.objects.create(
        campaign=campaign, first_recipient_id=1501, last_recipient_id=2000, size=500, status="sending"
    )

    why = campaign_waiting(campaign, now=now)

    busy_until = (now + timedelta(seconds=3)).astimezone(UTC).strftime("%H:%M:%S")
    open_until = (now + timedelta(seconds=30)).astimezone(UTC).strftime("%H:%M:%S")
    assert why == (
        f"waiting for rate-limit tokens / postmark busy until {busy_until} UTC; "
        f"postmark circuit open until {open_until} UTC"
    )


def test_a_cancelled_campaign_says_how_many_rows_workers_held_at_the_cancel():
    campaign = running_campaign("held", ["UTC"] * 3)
    (batch,) = CampaignBatch.objects.filter(campaign=campaign)
    held = campaign_delivery._claim_batch(batch.pk)  # a worker holds the batch when the cancel comes
    campaign = campaign_cancel(campaign_id=campaign.pk)
    assert campaign_waiting(campaign) == "cancelled: 3 row(s) a worker held at the cancel still finishing"

    campaign_delivery._run(held)  # it finds the campaign cancelled before its next call
    campaign.refresh_from_db()
    assert campaign_waiting(campaign) is None
    assert (campaign.skipped_count, campaign.remaining_count) == (3, 0)

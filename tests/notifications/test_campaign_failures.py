"""A campaign whose template stops rendering mid-run is paused with the reason, not retried batch after batch."""

import pytest

from notifications.campaign_delivery import campaign_batch_send
from notifications.campaigns import (
    campaign_create,
    campaign_fanout_segment,
    campaign_resume,
    campaign_start,
)
from notifications.counting import campaign_notifications
from notifications.models import Campaign, CampaignBatch, CampaignSegment, Recipient
from notifications.selectors import campaign_progress

pytestmark = pytest.mark.django_db


def test_a_template_that_no_longer_renders_pauses_the_campaign_with_the_reason(ledger):
    Recipient.objects.bulk_create(
        [Recipient(email=f"tpl{i}@example.com", email_marketing_consent=True, tags=["tpl"]) for i in range(3)]
    )
    campaign = campaign_create(
        name="tpl", template="newsletter", channel="email", context={"headline": "h", "body": "b"}, audience_tag="tpl"
    )
    campaign_start(campaign_id=campaign.pk)
    for segment in CampaignSegment.objects.filter(campaign=campaign):
        campaign_fanout_segment(segment_id=segment.pk)
    (batch,) = CampaignBatch.objects.filter(campaign=campaign)
    # What a deploy that changes the template's variables does to a running campaign.
    Campaign.objects.filter(pk=campaign.pk).update(context={"headline": "h"})

    campaign_batch_send(batch_id=batch.pk)

    campaign.refresh_from_db()
    batch.refresh_from_db()
    assert (
        campaign.status == "paused" and "missing variable(s)" in campaign.last_error and "body" in campaign.last_error
    )
    assert campaign_progress(campaign)["last_error"] == campaign.last_error
    assert batch.status == "paused"
    assert ledger.entries() == []
    assert set(campaign_notifications(campaign).values_list("status", flat=True)) == {"scheduled"}

    Campaign.objects.filter(pk=campaign.pk).update(context={"headline": "h", "body": "fixed"})
    campaign_resume(campaign_id=campaign.pk)
    campaign_batch_send(batch_id=batch.pk)

    campaign.refresh_from_db()
    assert (campaign.status, campaign.last_error, campaign.sent_count) == ("completed", "", 3)
    assert len(ledger.entries()) == 3

"""Campaigns end to end on real worker pools: fan-out, batch sends through Postmark's batch endpoint,
exactly once per consenting recipient, opt-outs, pause, resume, cancel, hard-bounce suppression."""

import time
import uuid
from collections import Counter

import pytest
from django.conf import settings

from harness.waiting import wait_until
from notifications.campaigns import (
    campaign_cancel,
    campaign_create,
    campaign_pause,
    campaign_resume,
    campaign_start,
)
from notifications.counting import campaign_notifications
from notifications.models import Campaign, CampaignBatch, Notification, Recipient, Suppression
from notifications.services import notification_send

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

NEWS = {"headline": "Spring news", "body": "Hello"}
#: Seconds a test waits for its campaign (a few hundred sends on two worker processes).
PATIENCE_SECONDS = 60.0


def recipients(count: int, *, tag: str, consent_every: int = 1, domain: str = "example.com") -> list[Recipient]:
    """`count` recipients tagged `tag`; every `consent_every`-th has e-mail marketing consent."""
    rows = [
        Recipient(
            email=f"{tag}-{i}@{domain}",
            email_marketing_consent=i % consent_every == 0,
            tags=[tag],
        )
        for i in range(count)
    ]
    return Recipient.objects.bulk_create(rows)


def finished(campaign_id: int) -> Campaign | None:
    campaign = Campaign.objects.get(pk=campaign_id)
    return campaign if campaign.status in ("completed", "cancelled") else None


def ledger_addresses(ledger, tag: str) -> Counter:
    return Counter(e["to"] for e in ledger.entries(limit=20_000) if e["to"].startswith(f"{tag}-"))


def new_campaign(tag: str, **kwargs) -> Campaign:
    return campaign_create(
        name=f"campaign {tag}", template="newsletter", channel="email", context=NEWS, audience_tag=tag, **kwargs
    )


def test_a_campaign_sends_exactly_once_to_each_consenting_recipient(workers, ledger):
    tag = f"c{uuid.uuid4().hex[:8]}"
    everyone = recipients(3000, tag=tag, consent_every=3)
    recipients(50, tag=f"other{tag}")  # not in the audience
    campaign = new_campaign(tag)

    campaign_start(campaign_id=campaign.pk)
    campaign = wait_until(lambda: finished(campaign.pk), timeout=PATIENCE_SECONDS, what="the campaign to complete")

    consenting = {r.email for r in everyone if r.email_marketing_consent}
    sent = ledger_addresses(ledger, tag)
    assert campaign.status == "completed"
    assert set(sent) == consenting and max(sent.values()) == 1
    assert not ledger_addresses(ledger, f"other{tag}")
    assert (campaign.materialized_count, campaign.sent_count, campaign.dead_count, campaign.skipped_count) == (
        1000,
        1000,
        0,
        0,
    )
    rows = campaign_notifications(campaign)
    assert rows.count() == 1000 and rows.filter(status="sent").count() == 1000
    # Written by several fan-out tasks, in batches of at most CAMPAIGN_BATCH_SIZE.
    assert campaign.segments_total > 1 and campaign.segments_done == campaign.segments_total
    sizes = list(CampaignBatch.objects.filter(campaign=campaign).values_list("size", flat=True))
    assert sum(sizes) == 1000 and max(sizes) <= settings.CAMPAIGN_BATCH_SIZE
    assert set(CampaignBatch.objects.filter(campaign=campaign).values_list("status", flat=True)) == {"done"}
    # Sent through Postmark's batch endpoint, each with its own one-click unsubscribe link.
    entries = [e for e in ledger.entries(limit=20_000) if e["to"] in consenting]
    assert all(e["batch"] for e in entries)
    links = {e["headers"]["List-Unsubscribe"] for e in entries}
    assert len(links) == 1000
    assert all(e["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click" for e in entries)


def test_pause_stops_sending_opt_outs_are_respected_and_resume_finishes(workers, ledger):
    tag = f"p{uuid.uuid4().hex[:8]}"
    everyone = recipients(4000, tag=tag)
    campaign = new_campaign(tag)
    campaign_start(campaign_id=campaign.pk)
    wait_until(
        lambda: Campaign.objects.get(pk=campaign.pk).sent_count >= 200, timeout=PATIENCE_SECONDS, what="the first sends"
    )

    campaign_pause(campaign_id=campaign.pk)
    time.sleep(2.0)  # the promise: sending stops within 2 s
    after_pause = sum(ledger_addresses(ledger, tag).values())
    time.sleep(1.5)
    assert sum(ledger_addresses(ledger, tag).values()) == after_pause
    assert after_pause < 4000

    # Recipients not yet reached withdraw consent while the campaign is paused.
    sent = set(ledger_addresses(ledger, tag))
    withdrawn = [r for r in everyone if r.email not in sent][-300:]
    Recipient.objects.filter(pk__in=[r.pk for r in withdrawn]).update(email_marketing_consent=False)

    campaign_resume(campaign_id=campaign.pk)
    campaign = wait_until(lambda: finished(campaign.pk), timeout=PATIENCE_SECONDS, what="the campaign to complete")

    final = ledger_addresses(ledger, tag)
    assert campaign.status == "completed"
    assert max(final.values()) == 1
    assert not {r.email for r in withdrawn} & set(final)
    assert set(final) == {r.email for r in everyone} - {r.email for r in withdrawn}
    assert (campaign.sent_count, campaign.skipped_count) == (3700, 300)
    skipped = campaign_notifications(campaign).filter(status="skipped")
    assert skipped.count() == 300
    assert all("withdrew marketing consent" in e for e in skipped.values_list("last_error", flat=True))


def test_a_cancelled_campaign_sends_nothing_more(workers, ledger):
    tag = f"x{uuid.uuid4().hex[:8]}"
    recipients(4000, tag=tag)
    campaign = new_campaign(tag)
    campaign_start(campaign_id=campaign.pk)
    wait_until(
        lambda: Campaign.objects.get(pk=campaign.pk).sent_count >= 200, timeout=PATIENCE_SECONDS, what="the first sends"
    )

    campaign_cancel(campaign_id=campaign.pk)
    # Final within seconds: the unsent rows count as skipped at the cancel; rows workers held end their calls.
    wait_until(
        lambda: Campaign.objects.get(pk=campaign.pk).remaining_count == 0, timeout=5.0, what="the counters final"
    )
    time.sleep(2.0)
    at_cancel = sum(ledger_addresses(ledger, tag).values())
    campaign = wait_until(
        lambda: (
            not campaign_notifications(campaign).exclude(status__in=["sent", "skipped"]).exists()
            and Campaign.objects.get(pk=campaign.pk)
        ),
        timeout=PATIENCE_SECONDS,
        what="the sweep to write the unsent rows skipped",
    )
    time.sleep(1.0)

    assert sum(ledger_addresses(ledger, tag).values()) == at_cancel < 4000
    assert campaign.status == "cancelled"
    assert campaign.sent_count == at_cancel
    # Segments not yet written when it was cancelled are never written.
    assert campaign.sent_count + campaign.skipped_count == campaign.materialized_count <= 4000
    assert campaign.segments_done == campaign.segments_total
    assert not campaign_notifications(campaign).exclude(status__in=["sent", "skipped"]).exists()


def test_hard_bounced_addresses_are_suppressed_for_later_campaigns_and_transactional_mail(workers, ledger):
    tag = f"b{uuid.uuid4().hex[:8]}"
    recipients(20, tag=tag)
    bouncing = recipients(5, tag=tag, domain="invalid.example")  # the sandbox refuses this domain
    first = new_campaign(tag)
    campaign_start(campaign_id=first.pk)
    first = wait_until(lambda: finished(first.pk), timeout=PATIENCE_SECONDS, what="the first campaign")

    assert (first.sent_count, first.dead_count) == (20, 5)
    assert set(Suppression.objects.filter(channel="email").values_list("address", flat=True)) >= {
        r.email for r in bouncing
    }

    second = new_campaign(tag)
    campaign_start(campaign_id=second.pk)
    second = wait_until(lambda: finished(second.pk), timeout=PATIENCE_SECONDS, what="the second campaign")
    assert (second.sent_count, second.dead_count, second.skipped_count) == (20, 0, 5)
    reasons = campaign_notifications(second).filter(status="skipped").values_list("last_error", flat=True)
    assert all("suppressed" in reason for reason in reasons)

    receipt, _ = notification_send(
        priority="transactional",
        channel="email",
        template="order_shipped",
        context={"order_number": "A-1", "name": "Ada"},
        to=bouncing[0].email,
    )
    receipt = wait_until(
        lambda: (n := Notification.objects.get(pk=receipt.pk)).status not in ("pending", "queued", "sending") and n,
        timeout=PATIENCE_SECONDS,
        what="the transactional message",
    )
    assert receipt.status == "skipped" and "suppressed" in receipt.last_error

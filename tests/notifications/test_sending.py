"""The one provider-call path met by faults: campaign rows sent again keep their content, a pacing provider is
skipped for urgent mail, what a vendor refuses is never `sent`, outcomes only from the claim's holder,
leases on PostgreSQL's clock, and an unknown outcome looked up before it is sent again."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.breaker import CircuitBreaker
from jobs.deadletters import deadletter_replay
from jobs.models import DeadLetter
from notifications.campaign_delivery import campaign_batch_send
from notifications.counting import campaign_notifications
from notifications.delivery import notification_claim
from notifications.models import Campaign, CampaignBatch, Notification, Suppression
from notifications.providers.base import OutboundMessage
from notifications.providers.registry import providers_for, reset_providers
from notifications.recovery import notification_relay
from notifications.rendering import render
from notifications.sending import record_sent
from tests.support.sending import deliver, fanned_out_campaign, submit

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("closed_breakers")]


def make_due(notification: Notification) -> None:
    Notification.objects.filter(pk=notification.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))


def send_batches(campaign: Campaign) -> None:
    for batch in CampaignBatch.objects.filter(campaign=campaign):
        campaign_batch_send(batch_id=batch.pk)


# --- a campaign row is a whole notification on every path -----------------------------------


def test_a_campaign_row_retried_after_a_transient_error_is_sent_with_its_campaigns_content(ledger):
    campaign = fanned_out_campaign("retry")
    ledger.set_fault("postmark", error_rate=1.0, status=500)
    ledger.set_fault("smtp", outage=True)
    send_batches(campaign)
    rows = list(campaign_notifications(campaign))
    assert {row.status for row in rows} == {"failed"}, "a transient failure leaves the rows for a retry"

    ledger.clear_faults()
    CircuitBreaker("postmark").reset()
    for row in rows:
        make_due(row)
        assert deliver(row).status == "sent"

    bodies = [entry["body"] for entry in ledger.entries()]
    assert len(bodies) == 3 and all("Everything must go" in body for body in bodies)
    campaign.refresh_from_db()
    assert (campaign.status, campaign.sent_count) == ("completed", 3)


def test_a_campaign_row_whose_worker_died_mid_batch_is_relayed_and_sent_with_its_content(ledger):
    campaign = fanned_out_campaign("relay")
    # What a worker killed after its claim leaves behind: rows sending under an expired lease.
    campaign_notifications(campaign).update(
        status="sending", attempts=1, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    notification_relay()
    for row in campaign_notifications(campaign):
        assert (row.status, row.outcome_unknown) == ("queued", True)
        assert deliver(row).status == "sent"

    assert len(ledger.entries()) == 3
    assert all("Everything must go" in entry["body"] for entry in ledger.entries())


def test_a_replayed_campaign_dead_letter_is_sent_with_its_campaigns_content(ledger):
    campaign = fanned_out_campaign("replay", count=1)
    ledger.set_fault("postmark", error_rate=1.0, status=422)
    send_batches(campaign)
    (row,) = campaign_notifications(campaign)
    assert row.status == "dead"
    ledger.clear_faults()

    deadletter_replay(dead_letter=DeadLetter.objects.get(subject_id=str(row.pk)))

    assert deliver(row).status == "sent"
    (entry,) = ledger.entries()
    assert "Everything must go" in entry["body"]


# --- a provider pacing us is a busy provider --------------------------------------------------


def test_security_mail_goes_to_the_fallback_at_once_while_the_primary_asks_us_to_wait(ledger):
    ledger.set_fault("postmark", retry_after=300)
    sent = [deliver(submit(priority="security", to=f"reset{i}@example.com")) for i in range(5)]

    assert [(n.status, n.provider) for n in sent] == [("sent", "smtp")] * 5
    assert ledger.stats()["postmark"]["rejected"] == 1, "after one 429 nobody calls the primary until it allows"
    assert not DeadLetter.objects.exists()


def test_a_paced_primary_does_not_push_a_failed_fallback_attempt_past_its_budget(ledger):
    # The primary asks for 300 s (beyond security's 60-s budget in the test settings) and the fallback fails for
    # a moment: the next attempt is the fallback's, soon, not the primary's in 300 s (which would be a dead letter
    # at once, as drill 14 once found).
    ledger.set_fault("postmark", retry_after=300)
    ledger.set_fault("smtp", outage=True)

    notification = deliver(submit(priority="security", to="reset@example.com"))

    assert (notification.status, notification.attempts) == ("failed", 1), notification.last_error
    assert notification.next_attempt_at < timezone.now() + timedelta(seconds=5)
    assert not DeadLetter.objects.exists()
    ledger.clear_faults("smtp")
    make_due(notification)

    assert (deliver(notification).status, notification.provider) == ("sent", "smtp")


def test_marketing_waits_for_a_paced_primary_instead_of_spilling_onto_the_fallback(ledger):
    ledger.set_fault("postmark", retry_after=60)
    deliver(submit(priority="transactional", to="first@example.com"))  # meets the 429, paces postmark
    notification = deliver(submit(priority="marketing", to="news@example.com"))

    assert (notification.status, notification.attempts) == ("failed", 0)
    assert notification.next_attempt_at > timezone.now() + timedelta(seconds=50)
    assert ledger.entries(to="news@example.com") == []


# --- what the provider says is what we record ---------------------------------------------------


def test_an_address_the_vendor_refuses_is_dead_lettered_and_suppressed_not_sent(ledger):
    notification = deliver(submit(to='"a,b"@example.com'))

    assert (notification.status, notification.provider_message_id) == ("dead", "")
    assert "recipient refused" in DeadLetter.objects.get(subject_id=str(notification.pk)).message
    assert Suppression.objects.filter(channel="email", address='"a,b"@example.com').exists()
    assert ledger.entries() == []


# --- claims: PostgreSQL's clock, and only the holder records --------------------------------------


def test_a_worker_whose_clock_runs_ahead_cannot_take_over_a_live_lease(ledger, monkeypatch):
    notification = submit()
    assert notification_claim(notification_ids=[str(notification.pk)])
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + timedelta(seconds=30))

    assert notification_claim(notification_ids=[str(notification.pk)]) == [], "the lease is still live in PostgreSQL"
    assert Notification.objects.get(pk=notification.pk).attempts == 1


def test_only_the_worker_holding_the_claim_records_the_outcome(ledger):
    notification = submit()
    (first,) = notification_claim(notification_ids=[str(notification.pk)])
    Notification.objects.filter(pk=notification.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    (second,) = notification_claim(notification_ids=[str(notification.pk)])
    assert second.claim_token != first.claim_token

    record_sent([(first, "postmark", "late-message-id")])

    row = Notification.objects.get(pk=notification.pk)
    assert (row.status, row.provider_message_id) == ("sending", ""), "the first worker lost its claim"
    record_sent([(second, "postmark", "message-id")])
    assert Notification.objects.get(pk=notification.pk).status == "sent"


# --- an unknown outcome is looked up where the vendor can tell ---------------------------------


@pytest.mark.parametrize(
    ("channel", "to", "provider"), [("email", "ada@example.com", "postmark"), ("sms", "+14155550123", "twilio")]
)
def test_a_row_whose_worker_died_after_the_vendor_accepted_is_looked_up_not_sent_again(ledger, channel, to, provider):
    notification = submit(channel=channel, to=to)
    # The worker's call reached the vendor, then the worker died before it wrote `sent`.
    content = render(template=notification.template, channel=channel, context=notification.context)
    vendor = next(p for p in providers_for(channel) if p.name == provider)
    accepted = vendor.send(
        OutboundMessage(
            notification_id=str(notification.pk),
            idempotency_key=notification.delivery_key,
            channel=channel,
            to=notification.to,
            content=content,
        )
    )
    Notification.objects.filter(pk=notification.pk).update(
        status="sending", attempts=1, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )

    notification_relay()
    notification = deliver(notification)

    assert (notification.status, notification.provider, notification.provider_message_id) == (
        "sent",
        provider,
        accepted.message_id,
    )
    assert len(ledger.entries(idempotency_key=notification.delivery_key)) == 1
    assert ledger.stats()[provider]["replays"] == 0, "the vendor was asked, not sent the message again"


def test_an_ok_without_the_vendors_message_id_is_not_recorded_as_sent(ledger, settings):
    settings.NOTIFICATIONS_PROVIDERS = {
        **settings.NOTIFICATIONS_PROVIDERS,
        "push": [{"name": "silent", "backend": "tests.support.providers.Provider", "options": {}}],
    }
    reset_providers()
    try:
        notification = deliver(submit(channel="push", to="device-token-silent-0001"))
    finally:
        reset_providers()

    assert (notification.status, notification.outcome_unknown) == ("failed", True)
    assert "without a message id" in notification.last_error


# --- secrets: never kept once final, never shown ----------------------------------------------


def test_a_reset_code_is_wiped_from_the_row_once_it_is_sent_or_dead(ledger):
    sent = deliver(submit(to="kept@example.com"))
    dead = deliver(submit(channel="sms", to="+15005550001"))  # the vendor refuses this number

    assert (sent.status, sent.context) == ("sent", {})
    assert (dead.status, dead.context) == ("dead", {})
    assert "123456" in ledger.entries(to="kept@example.com")[0]["body"], "the code went out before it was wiped"


def test_a_dead_message_whose_code_was_wiped_cannot_be_replayed_and_says_why(ledger):
    from jobs.deadletters import NotReplayable, deadletters_replay_many

    dead = deliver(submit(channel="sms", to="+15005550001"))
    letter = DeadLetter.objects.get(subject_id=str(dead.pk))

    with pytest.raises(NotReplayable, match="secret code was wiped"):
        deadletter_replay(dead_letter=letter)
    outcome = deadletters_replay_many(ids=[letter.pk])
    assert outcome.not_replayable and DeadLetter.objects.get(pk=letter.pk).status == "open"


def test_a_viewer_in_the_admin_never_sees_a_live_reset_code(client, django_user_model):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user(username="viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_notification"))
    client.force_login(viewer)
    pending = submit(to="waiting@example.com")

    page = client.get(f"/admin/notifications/notification/{pending.pk}/change/").content.decode()

    assert "123456" not in page
    assert "(secret)" in page

"""Quiet hours: marketing waits until morning in the recipient's time zone; security and transactional never wait.

The hour of day is chosen relative to now, so these tests mean the same whenever they run.
"""

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from notifications.campaign_delivery import campaign_batch_send
from notifications.campaigns import campaign_create, campaign_fanout_segment, campaign_start
from notifications.consent import parse_quiet_hours, quiet_until
from notifications.counting import campaign_notifications
from notifications.delivery import notification_deliver
from notifications.models import CampaignBatch, CampaignSegment, Notification, Recipient
from notifications.services import notification_send

pytestmark = pytest.mark.django_db


def zone_at_local_hour(hour: int) -> str:
    """A fixed-offset zone where it is now `hour` o'clock (Etc/GMT signs are inverted)."""
    offset = (hour - datetime.now(UTC).hour + 12) % 24 - 12
    return f"Etc/GMT{-offset:+d}" if offset else "UTC"


def quiet_hours_around_now() -> str:
    """Quiet from 2 hours ago to 2 hours ahead in UTC+0 terms; a zone at local hour 14 is outside."""
    hour = datetime.now(UTC).hour
    return f"{(hour - 2) % 24}-{(hour + 2) % 24}"


@pytest.mark.parametrize(
    ("setting", "local", "quiet"),
    [("21-8", "22:30", True), ("21-8", "07:59", True), ("21-8", "08:00", False), ("21-8", "12:00", False),
     ("1-5", "03:00", True), ("1-5", "05:00", False), ("", "03:00", False)],
)  # fmt: skip
def test_quiet_until_knows_which_local_hours_are_quiet(setting, local, quiet):
    hour, minute = map(int, local.split(":"))
    now = datetime(2026, 3, 10, hour, minute, tzinfo=UTC)
    with override_settings(MARKETING_QUIET_HOURS=setting):
        until = quiet_until("UTC", now)
    assert (until is not None) == quiet
    if quiet:
        assert until > now and until.hour == int(setting.split("-")[1]) and until - now < timedelta(hours=24)


def test_quiet_hours_end_at_local_morning_across_a_daylight_saving_change():
    # 2026-03-29 is the night Berlin moves its clocks forward: 08:00 local is 06:00 UTC.
    now = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
    with override_settings(MARKETING_QUIET_HOURS="21-8"):
        until = quiet_until("Europe/Berlin", now)
    assert until.astimezone(UTC) == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)


def test_a_bad_setting_says_what_a_good_one_looks_like():
    with pytest.raises(ValueError, match="'21-8'"):
        parse_quiet_hours("9pm-8am")


def test_a_campaign_batch_waits_for_recipients_in_quiet_hours_and_sends_the_others(ledger):
    asleep = [Recipient.objects.create(email=f"asleep{i}@example.com", email_marketing_consent=True,
                                       timezone=zone_at_local_hour(datetime.now(UTC).hour), tags=["qh"])
              for i in range(3)]  # fmt: skip
    awake = [Recipient.objects.create(email=f"awake{i}@example.com", email_marketing_consent=True,
                                      timezone=zone_at_local_hour(14 if abs(datetime.now(UTC).hour - 14) > 3 else 20),
                                      tags=["qh"])
             for i in range(3)]  # fmt: skip
    campaign = campaign_create(
        name="qh", template="newsletter", channel="email", context={"headline": "h", "body": "b"}, audience_tag="qh"
    )
    with override_settings(MARKETING_QUIET_HOURS=quiet_hours_around_now()):
        campaign_start(campaign_id=campaign.pk)
        for segment in CampaignSegment.objects.filter(campaign=campaign):
            campaign_fanout_segment(segment_id=segment.pk)
        (batch,) = CampaignBatch.objects.filter(campaign=campaign)
        campaign_batch_send(batch_id=batch.pk)

    sent_to = {e["to"] for e in ledger.entries()}
    assert sent_to == {r.email for r in awake}
    rows = campaign_notifications(campaign)
    assert set(rows.filter(recipient__in=asleep).values_list("status", flat=True)) == {"scheduled"}
    batch.refresh_from_db()
    assert batch.status == "deferred" and timezone.now() < batch.next_attempt_at < timezone.now() + timedelta(hours=3)


@pytest.mark.parametrize(("priority", "waits"), [("security", False), ("transactional", False), ("marketing", True)])
def test_only_marketing_waits_for_quiet_hours(ledger, priority, waits):
    Recipient.objects.create(
        email="night-owl@example.com",
        email_marketing_consent=True,
        timezone=zone_at_local_hour(datetime.now(UTC).hour),
    )
    notification, _ = notification_send(
        priority=priority, channel="email", template="password_reset", context={"code": "123456"},
        to="night-owl@example.com",
    )  # fmt: skip
    with override_settings(MARKETING_QUIET_HOURS=quiet_hours_around_now()):
        notification_deliver(notification_ids=[str(notification.pk)])

    notification = Notification.objects.get(pk=notification.pk)
    if waits:
        assert notification.status == "failed" and notification.attempts == 0
        assert notification.last_error.startswith("waiting: quiet hours")
        assert notification.next_attempt_at > timezone.now()
        assert ledger.entries() == []
    else:
        assert notification.status == "sent"
        assert len(ledger.entries(idempotency_key=notification.idempotency_key)) == 1


def test_a_misspelt_quiet_hours_setting_is_refused_at_start_up(settings):
    from django.core.checks import run_checks

    settings.MARKETING_QUIET_HOURS = "21:00-08:00"
    errors = [e for e in run_checks() if e.id == "notifications.E008"]
    assert len(errors) == 1 and "'21-8'" in errors[0].msg

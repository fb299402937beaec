"""`seed_notifications`: a year of mostly sent campaign rows and some single sends, to existing recipients, loaded by
COPY; bad input says what to give."""

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db.models import Count

from notifications.counting import campaign_notifications
from notifications.models import Campaign, Notification, Recipient

pytestmark = pytest.mark.django_db


def seed(*args: str) -> str:
    out = StringIO()
    call_command("seed_notifications", *args, stdout=out)
    return out.getvalue()


def test_seed_loads_a_realistic_mix_to_existing_recipients_and_reports_the_rate():
    output = seed("20000", "--recipients", "1000", "--batch", "7000")

    assert Notification.objects.count() == 20_000
    assert Recipient.objects.count() == 1000, "the recipients it needed were seeded first"
    assert re.search(r"seeded 20,000 notifications \(18,000 in \d+ campaigns\) .* [\d,]+ rows/s", output)
    campaign_rows = Notification.objects.filter(campaign__isnull=False)
    assert campaign_rows.count() == 18_000
    assert campaign_rows.filter(status="sent").count() > 0.9 * 18_000
    for campaign in Campaign.objects.all():
        rows = campaign_notifications(campaign)
        assert (
            rows.count()
            == campaign.materialized_count
            == campaign.sent_count + campaign.dead_count + (campaign.skipped_count)
        )
        assert not rows.exclude(campaign=campaign).exists(), "campaign keys are derived from the campaign"
    singles = Notification.objects.filter(campaign__isnull=True)
    assert set(singles.values_list("priority", flat=True).distinct()) == {"transactional", "security"}
    assert not singles.filter(idempotency_key="").exists()
    assert (
        singles.filter(status="sent").exclude(provider_message_id="").count() == singles.filter(status="sent").count()
    )
    statuses = dict(Notification.objects.values_list("status").annotate(n=Count("pk")))
    assert {"sent", "dead", "skipped"} <= set(statuses)
    span = Notification.objects.order_by("created_at").values_list("created_at", flat=True)
    assert (span.last() - span.first()).days > 300, "a year of traffic"
    # Every row goes to its recipient's address on its channel.
    for row in Notification.objects.exclude(channel="push").select_related("recipient")[:500]:
        assert row.to == (row.recipient.email if row.channel == "email" else row.recipient.phone)


def test_a_second_run_adds_more_without_collisions():
    seed("3000", "--recipients", "500")
    seed("2000", "--recipients", "500")

    assert Notification.objects.count() == 5000
    keys = Notification.objects.exclude(idempotency_key="").values_list("idempotency_key", flat=True)
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("bad", ["0", "-5", "lots", "1.5"])
def test_bad_count_says_what_to_give(bad):
    with pytest.raises(CommandError, match="N must be a whole number"):
        seed(bad)
    assert Notification.objects.count() == 0


def test_bad_options_say_what_to_give():
    with pytest.raises(CommandError, match="--campaign-share must be between 0 and 1"):
        seed("10", "--campaign-share", "2")
    with pytest.raises(CommandError, match="--batch must be at least 1"):
        seed("10", "--batch", "0")
    with pytest.raises(CommandError, match="--recipients must be between 1 and"):
        seed("10", "--recipients", "0")
    with pytest.raises(CommandError, match="--days must be at least 1"):
        seed("10", "--days", "0")

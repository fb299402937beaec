"""`seed_recipients`: unique, valid, consenting, tagged recipients loaded by COPY; bad input says what to give."""

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db.models import Count, Q

from notifications.models import Recipient

pytestmark = pytest.mark.django_db(transaction=True)

E164 = re.compile(r"^\+[1-9]\d{1,14}$")


def seed(*args: str) -> str:
    out = StringIO()
    call_command("seed_recipients", *args, stdout=out)
    return out.getvalue()


def test_seed_loads_n_unique_valid_recipients_and_reports_the_rate():
    output = seed("5000", "--batch", "2000")

    assert Recipient.objects.count() == 5000
    emails = list(Recipient.objects.values_list("email", flat=True))
    phones = list(Recipient.objects.values_list("phone", flat=True))
    assert len(set(emails)) == 5000
    assert len(set(phones)) == 5000
    assert all(email.startswith("seed-") and email.endswith("@example.com") for email in emails)
    assert all(E164.match(phone) for phone in phones)
    assert "5,000 / 5,000 rows" in output
    assert re.search(r"seeded 5,000 recipients .* [\d,]+ rows/s", output)


def test_seed_gives_roughly_the_requested_consent_share_per_channel():
    seed("5000", "--consent-share", "0.9")

    shares = Recipient.objects.aggregate(
        email=Count("pk", filter=Q(email_marketing_consent=True)),
        sms=Count("pk", filter=Q(sms_marketing_consent=True)),
        push=Count("pk", filter=Q(push_marketing_consent=True)),
    )
    for channel, consenting in shares.items():
        assert 0.8 <= consenting / 5000 <= 1.0, channel


def test_seed_tags_every_recipient_once_or_twice_with_the_prefix_and_varies_locale_and_zone():
    seed("5000", "--tag-prefix", "demo", "--locales", "en,de")

    tag_counts = {len(tags) for tags in Recipient.objects.values_list("tags", flat=True)}
    assert tag_counts == {1, 2}
    assert not Recipient.objects.exclude(
        tags__overlap=[f"demo-{t}" for t in ("news", "offers", "product", "events", "vip")]
    ).exists()
    assert Recipient.objects.filter(tags__contains=["demo-vip"]).exists()
    assert set(Recipient.objects.values_list("locale", flat=True).distinct()) == {"en", "de"}
    assert Recipient.objects.values("timezone").distinct().count() > 1


def test_a_second_run_adds_more_without_collisions():
    Recipient.objects.create(email="real@example.org", phone="+14155550100")
    seed("3000")
    seed("2000")

    assert Recipient.objects.count() == 5001
    assert Recipient.objects.values("email").distinct().count() == 5001
    assert Recipient.objects.values("phone").distinct().count() == 5001


@pytest.mark.parametrize("bad", ["0", "-5", "lots", "1.5"])
def test_bad_count_says_what_to_give(bad):
    with pytest.raises(CommandError, match="N must be a whole number of recipients, at least 1"):
        seed(bad)
    assert Recipient.objects.count() == 0


def test_bad_options_say_what_to_give():
    with pytest.raises(CommandError, match="--consent-share must be between 0 and 1"):
        seed("10", "--consent-share", "1.5")
    with pytest.raises(CommandError, match="--batch must be at least 1"):
        seed("10", "--batch", "0")
    with pytest.raises(CommandError, match="--tag-prefix"):
        seed("10", "--tag-prefix", "has space")

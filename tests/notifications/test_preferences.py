"""The preference centre: a recipient's signed link to their own page (consent per channel, muted topics, quiet
hours, time zone), and the next send honouring what they chose, running campaigns included.

Quiet hours are chosen relative to now (as in test_quiet_hours), so these tests mean the same whenever they run.
"""

from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client, override_settings
from django.utils import timezone

from notifications.campaign_delivery import campaign_batch_send
from notifications.campaigns import campaign_create, campaign_fanout_segment, campaign_start
from notifications.counting import campaign_notifications
from notifications.delivery import notification_deliver
from notifications.models import Campaign, CampaignBatch, CampaignSegment, Notification, Recipient
from notifications.services import notification_send
from notifications.unsubscribe import preferences_url, unsubscribe_url
from tests.notifications.test_quiet_hours import quiet_hours_around_now, zone_at_local_hour

pytestmark = pytest.mark.django_db

NEWS = {"headline": "Spring news", "body": "Hello"}
#: The columns the page may change, compared before and after a refused request.
PREFERENCE_COLUMNS = (
    "email_marketing_consent",
    "sms_marketing_consent",
    "push_marketing_consent",
    "muted_topics",
    "quiet_hours",
    "timezone",
    "tags",
)


def path_of(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def page_of(recipient: Recipient) -> str:
    return path_of(preferences_url(recipient_id=recipient.pk))


def stored(recipient: Recipient) -> dict:
    return Recipient.objects.filter(pk=recipient.pk).values(*PREFERENCE_COLUMNS).get()


def ada(**fields) -> Recipient:
    defaults = dict(
        email="ada@example.com",
        email_marketing_consent=True,
        sms_marketing_consent=True,
        tags=["news", "offers"],
        timezone="Europe/Berlin",
    )
    return Recipient.objects.create(**{**defaults, **fields})


def form(*, email=True, sms=True, push=False, topics=("news", "offers"), quiet_hours="", tz="Europe/Berlin") -> dict:
    """The page's form as a browser posts it: a ticked box sends "on", an unticked one nothing."""
    data = {"topics": list(topics), "quiet_hours": quiet_hours, "timezone": tz}
    data.update({name: "on" for name, ticked in (("email", email), ("sms", sms), ("push", push)) if ticked})
    return data


# --- the link and the page ---------------------------------------------------------------------------------------


def test_the_signed_link_opens_the_page_and_a_post_stores_the_choices(client):
    recipient = ada()

    shown = client.get(page_of(recipient))
    assert shown.status_code == 200
    assert b"a***@example.com" in shown.content and b"ada@example.com" not in shown.content
    assert stored(recipient)["muted_topics"] == []  # a GET changes nothing (link scanners prefetch GETs)

    # One link: a link made a second later carries another timestamp in its signature.
    link = page_of(recipient)
    saved = client.post(link, form(sms=False, topics=["news"], quiet_hours="22-7", tz="Asia/Tokyo"))
    assert saved.status_code == 302 and saved["Location"] == link + "?saved=1"
    assert stored(recipient) == {
        "email_marketing_consent": True,
        "sms_marketing_consent": False,
        "push_marketing_consent": False,
        "muted_topics": ["offers"],
        "quiet_hours": "22-7",
        "timezone": "Asia/Tokyo",
        "tags": ["news", "offers"],
    }

    again = client.get(saved["Location"]).content.decode()
    assert "Saved." in again
    assert 'name="sms"' in again and 'name="sms" checked' not in again
    assert 'value="offers"' in again and 'value="offers" id="id_topics_1" checked' not in again
    assert 'value="news" id="id_topics_0" checked' in again
    assert 'value="22-7"' in again and 'value="Asia/Tokyo"' in again


def test_a_muted_topic_can_be_unmuted_and_quiet_hours_set_back_to_the_default(client):
    recipient = ada(muted_topics=["offers"], quiet_hours="none")
    page = client.get(page_of(recipient)).content.decode()
    assert 'value="offers" id="id_topics_1"' in page and 'value="offers" id="id_topics_1" checked' not in page

    client.post(page_of(recipient), form(topics=["news", "offers"], quiet_hours=""))
    assert (stored(recipient)["muted_topics"], stored(recipient)["quiet_hours"]) == ([], "")


def test_a_forged_or_foreign_link_is_refused_and_changes_nothing(client):
    recipient = ada()
    before = stored(recipient)
    good = page_of(recipient)
    forged = good[:-3] + ("abc" if not good.endswith("abc") else "xyz")
    unsubscribe_link = (
        "/preferences/" + path_of(unsubscribe_url(recipient_id=recipient.pk, channel="email")).rsplit("/", 1)[1]
    )

    for path in (forged, unsubscribe_link, "/preferences/not-a-token"):
        assert client.get(path).status_code == 400
        response = client.post(path, form(email=False, sms=False, topics=[]))
        assert response.status_code == 400 and b"This link does not work" in response.content
    assert stored(recipient) == before


def test_the_link_of_a_recipient_who_is_gone_is_not_found(client):
    recipient = ada()
    path = page_of(recipient)
    recipient.delete()
    assert client.get(path).status_code == 404


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("quiet_hours", "9pm-8am", "like 21-8"),
        ("quiet_hours", "25-3", "like 21-8"),
        ("quiet_hours", "8-8", "like 21-8"),
        ("timezone", "Mars/Olympus_Mons", "Unknown time zone"),
        ("timezone", "../../etc/passwd", "Unknown time zone"),
        ("timezone", "", "This field is required"),
        ("topics", "someone-elses-topic", "Select a valid choice"),
    ],
)
def test_a_bad_field_shows_its_error_and_nothing_is_saved(client, field, value, message):
    recipient = ada()
    before = stored(recipient)
    data = form(email=False, topics=["news"], quiet_hours="22-6")
    data[field] = [value] if field == "topics" else value

    response = client.post(page_of(recipient), data)

    assert response.status_code == 400
    page = response.content.decode()
    assert "Nothing was saved" in page and message in page
    assert stored(recipient) == before


def test_the_form_is_csrf_protected(client):
    recipient = ada()
    before = stored(recipient)
    strict = Client(enforce_csrf_checks=True)

    assert strict.post(page_of(recipient), form(email=False)).status_code == 403
    assert stored(recipient) == before

    strict.get(page_of(recipient))  # sets the CSRF cookie, as a browser opening the page does
    token = strict.cookies["csrftoken"].value
    assert strict.post(page_of(recipient), {**form(email=False), "csrfmiddlewaretoken": token}).status_code == 302
    assert stored(recipient)["email_marketing_consent"] is False


def test_the_page_cannot_be_framed_cached_or_leak_its_link(client):
    response = client.get(page_of(ada()))
    assert response["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response["Content-Security-Policy"]
    assert "no-store" in response["Cache-Control"]
    assert response["Referrer-Policy"] == "same-origin"


def test_the_page_shows_only_its_own_recipients_data(client):
    recipient = ada()
    Recipient.objects.create(email="bob@example.org", tags=["bob-secret-topic"], muted_topics=["bob-muted"])
    page = client.get(page_of(recipient)).content.decode()
    assert "bob" not in page and "example.org" not in page


def test_only_the_topics_offered_can_be_muted():
    from notifications.unsubscribe import recipient_preferences_update

    recipient = ada()
    recipient_preferences_update(
        recipient_id=recipient.pk, consent={"email": True}, muted_topics=["offers", "made-up"], quiet_hours="",
        timezone="UTC",
    )  # fmt: skip
    assert stored(recipient)["muted_topics"] == ["offers"]


# --- the links in marketing e-mail -------------------------------------------------------------------------------


def test_a_marketing_email_carries_the_preference_link_next_to_the_unsubscribe_link(client, ledger):
    notification, _ = notification_send(
        priority="marketing", channel="email", template="newsletter", to="ada@example.com", context=NEWS
    )
    notification_deliver(notification_ids=[str(notification.pk)])

    (entry,) = ledger.entries(idempotency_key=notification.idempotency_key)
    preferences = preferences_url(recipient_id=notification.recipient_id)
    unsubscribe = unsubscribe_url(recipient_id=notification.recipient_id, channel="email")
    assert f"Your e-mail preferences: {preferences}\nUnsubscribe: {unsubscribe}" in entry["body"]
    assert client.get(path_of(preferences)).status_code == 200


def test_a_transactional_email_carries_no_preference_link(ledger):
    notification, _ = notification_send(
        priority="transactional", channel="email", template="newsletter", to="ada@example.com", context=NEWS
    )
    notification_deliver(notification_ids=[str(notification.pk)])
    (entry,) = ledger.entries(idempotency_key=notification.idempotency_key)
    assert "/preferences/" not in entry["body"] and "/unsubscribe/" not in entry["body"]


# --- the next send follows the choices ---------------------------------------------------------------------------


def started_campaign(tag: str) -> Campaign:
    """A running campaign to `tag`, its rows written, its batches not sent yet."""
    campaign = campaign_create(
        name=f"campaign {tag}", template="newsletter", channel="email", context=NEWS, audience_tag=tag
    )
    campaign_start(campaign_id=campaign.pk)
    for segment in CampaignSegment.objects.filter(campaign=campaign):
        campaign_fanout_segment(segment_id=segment.pk)
    return campaign


def audience(tag: str, count: int, **fields) -> list[Recipient]:
    return [
        Recipient.objects.create(email=f"{tag}{i}@example.com", email_marketing_consent=True, tags=[tag], **fields)
        for i in range(count)
    ]


@override_settings(CAMPAIGN_BATCH_SIZE=2)
def test_a_topic_muted_on_the_page_skips_the_rest_of_a_running_campaign(client, ledger):
    everyone = audience("spring", 4)  # two batches of two, in the order created
    campaign = started_campaign("spring")
    early, late = CampaignBatch.objects.filter(campaign=campaign).order_by("first_recipient_id")
    campaign_batch_send(batch_id=early.pk)
    mutes = everyone[2]

    client.post(page_of(mutes), form(sms=False, topics=[], tz="UTC"))
    campaign_batch_send(batch_id=late.pk)

    assert {e["to"] for e in ledger.entries()} == {r.email for r in everyone} - {mutes.email}
    row = campaign_notifications(campaign).get(recipient=mutes)
    assert (row.status, row.last_error) == ("skipped", "not sent: the recipient muted the topic spring")
    assert set(row.events.values_list("kind", flat=True)) == {"skipped"}
    campaign.refresh_from_db()
    assert (campaign.sent_count, campaign.skipped_count) == (3, 1)


def test_a_muted_topic_skips_a_campaign_row_retried_on_the_single_send_path(client, ledger):
    (recipient,) = audience("autumn", 1)
    campaign = started_campaign("autumn")
    row = campaign_notifications(campaign).get()
    # Where a failed first attempt leaves a campaign row: due again on the single-send path.
    Notification.objects.filter(pk=row.pk).update(
        status="failed", next_attempt_at=timezone.now() - timedelta(seconds=1)
    )

    client.post(page_of(recipient), form(sms=False, topics=[], tz="UTC"))
    notification_deliver(notification_ids=[str(row.pk)])

    row.refresh_from_db()
    assert (row.status, row.last_error) == ("skipped", "not sent: the recipient muted the topic autumn")
    assert ledger.entries() == []


def test_a_new_campaign_to_a_muted_topic_writes_no_row_for_the_recipient(ledger):
    muted, listening = audience("winter", 2)
    Recipient.objects.filter(pk=muted.pk).update(muted_topics=["winter"])
    campaign = started_campaign("winter")
    assert list(campaign_notifications(campaign).values_list("recipient", flat=True)) == [listening.pk]


def test_own_quiet_hours_defer_a_single_marketing_send_until_they_end(client, ledger):
    (recipient,) = audience("night", 1, timezone="UTC")
    client.post(page_of(recipient), form(sms=False, topics=["night"], quiet_hours=quiet_hours_around_now(), tz="UTC"))
    notification, _ = notification_send(
        priority="marketing", channel="email", template="newsletter", to=recipient.email, context=NEWS
    )

    with override_settings(MARKETING_QUIET_HOURS=""):  # the platform has none: theirs alone hold it
        notification_deliver(notification_ids=[str(notification.pk)])

    notification.refresh_from_db()
    assert (notification.status, notification.attempts) == ("failed", 0)
    assert notification.last_error.startswith("waiting: quiet hours in UTC")
    end = (datetime.now(UTC).hour + 2) % 24
    assert notification.next_attempt_at.astimezone(UTC).hour == end
    assert timezone.now() < notification.next_attempt_at < timezone.now() + timedelta(hours=3)
    assert ledger.entries() == []


def test_own_quiet_hours_follow_the_time_zone_chosen_on_the_page(client, ledger):
    (recipient,) = audience("tz", 1, timezone="UTC", quiet_hours="2-4")
    awake_now = zone_at_local_hour(12)
    asleep_now = zone_at_local_hour(3)
    client.post(page_of(recipient), form(sms=False, topics=["tz"], quiet_hours="2-4", tz=asleep_now))
    held, _ = notification_send(priority="marketing", channel="email", template="newsletter", to=recipient.email,
                                context=NEWS)  # fmt: skip
    with override_settings(MARKETING_QUIET_HOURS=""):
        notification_deliver(notification_ids=[str(held.pk)])
    assert Notification.objects.get(pk=held.pk).status == "failed"

    client.post(page_of(recipient), form(sms=False, topics=["tz"], quiet_hours="2-4", tz=awake_now))
    sent, _ = notification_send(priority="marketing", channel="email", template="newsletter", to=recipient.email,
                                context=NEWS)  # fmt: skip
    with override_settings(MARKETING_QUIET_HOURS=""):
        notification_deliver(notification_ids=[str(sent.pk)])
    assert Notification.objects.get(pk=sent.pk).status == "sent"


def test_none_overrides_the_platforms_quiet_hours(ledger):
    (recipient,) = audience("owl", 1, timezone="UTC", quiet_hours="none")
    notification, _ = notification_send(
        priority="marketing", channel="email", template="newsletter", to=recipient.email, context=NEWS
    )
    with override_settings(MARKETING_QUIET_HOURS=quiet_hours_around_now()):
        notification_deliver(notification_ids=[str(notification.pk)])
    assert Notification.objects.get(pk=notification.pk).status == "sent"


def test_own_quiet_hours_defer_a_campaign_batch(ledger):
    asleep, awake = audience("dusk", 2, timezone="UTC")
    Recipient.objects.filter(pk=asleep.pk).update(quiet_hours=quiet_hours_around_now())
    with override_settings(MARKETING_QUIET_HOURS=""):
        campaign = started_campaign("dusk")
        (batch,) = CampaignBatch.objects.filter(campaign=campaign)
        campaign_batch_send(batch_id=batch.pk)

    assert {e["to"] for e in ledger.entries()} == {awake.email}
    assert campaign_notifications(campaign).get(recipient=asleep).status == "scheduled"
    batch.refresh_from_db()
    assert batch.status == "deferred" and timezone.now() < batch.next_attempt_at < timezone.now() + timedelta(hours=3)


@pytest.mark.parametrize("priority", ["security", "transactional"])
def test_security_and_transactional_sends_ignore_topics_and_quiet_hours(ledger, priority):
    (recipient,) = audience("alerts", 1, timezone="UTC", quiet_hours=quiet_hours_around_now(), muted_topics=["alerts"])
    notification, _ = notification_send(
        priority=priority, channel="email", template="password_reset", context={"code": "123456"}, to=recipient.email
    )
    notification_deliver(notification_ids=[str(notification.pk)])
    assert Notification.objects.get(pk=notification.pk).status == "sent"

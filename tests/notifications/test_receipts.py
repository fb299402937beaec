"""Delivery receipts: the sandbox reports each message as Postmark, Twilio and Vonage would (their formats, their
signatures) to the platform's live server; the reports become timeline events once each, suppress what must be
suppressed, and a report that arrives before our own `sent` is linked when it can be."""

import time

import pytest
import requests
from django.conf import settings

from harness.waiting import wait_until
from notifications import receipts
from notifications.models import Notification, NotificationEvent, Suppression
from tests.support.sending import delivered, submit

pytestmark = pytest.mark.django_db(transaction=True)


def _kinds(notification: Notification) -> list[str]:
    return list(
        NotificationEvent.objects.filter(notification=notification).order_by("id").values_list("kind", flat=True)
    )


def _wait_kinds(notification: Notification, expected: list[str], timeout: float = 20.0) -> list[str]:
    return wait_until(
        lambda: _kinds(notification) if _kinds(notification) == expected else None,
        timeout=timeout,
        what=f"events {expected} of {notification.pk} (have {_kinds(notification)})",
    )


def _wait_stats(ledger, expected: dict) -> None:
    """The sandbox counts a report once it has read the answer, a moment after the platform stored it."""
    wait_until(lambda: ledger.callbacks()["stats"] == expected, timeout=10, what=f"report answers {expected}")


def _postmark_reports(ledger, live_server, **mix):
    ledger.set_callbacks(
        "postmark",
        url=f"{live_server.url}/anymail/postmark/tracking/",
        auth=settings.ANYMAIL["WEBHOOK_SECRET"],
        delay_ms=50,
        **mix,
    )


def test_postmark_reports_delivered_and_opened(ledger, live_server, closed_breakers):
    _postmark_reports(ledger, live_server, delivered=1.0, opened=1.0)

    notification = delivered(submit(to="reader@example.com"))

    assert notification.provider == "postmark"
    _wait_kinds(notification, ["sent", "delivered", "opened"])
    _wait_stats(ledger, {"postmark:200": 2})


def test_a_hard_bounce_is_an_event_and_suppresses_the_address(ledger, live_server, closed_breakers):
    _postmark_reports(ledger, live_server, delivered=0.0, bounced=1.0)

    notification = delivered(submit(to="gone@example.com"))

    _wait_kinds(notification, ["sent", "bounced"])
    bounce = NotificationEvent.objects.get(notification=notification, kind="bounced")
    assert bounce.data["hard"] is True and bounce.data["bounce_type"] == "HardBounce"
    # The report's view stores the event, then suppresses (two receivers of anymail's signal, each committing).
    wait_until(
        lambda: Suppression.objects.filter(channel="email", address="gone@example.com").exists(),
        timeout=10,
        what="the address suppressed",
    )


def test_twilio_status_callbacks_are_verified_and_stored(ledger, live_server, closed_breakers):
    ledger.set_callbacks(
        "twilio", url=f"{live_server.url}/receipts/twilio", secret="sandbox-token", delay_ms=50, delivered=1.0
    )

    notification = delivered(submit(channel="sms", to="+14155550123"))

    assert notification.provider == "twilio"
    _wait_kinds(notification, ["sent", "delivered"])
    # Twilio's own "sent" (handed to the carrier) is answered and not stored: our `sent` says as much.
    _wait_stats(ledger, {"twilio:204": 2})


def test_an_sms_that_can_never_arrive_suppresses_the_number(ledger, live_server, closed_breakers):
    ledger.set_callbacks(
        "twilio",
        url=f"{live_server.url}/receipts/twilio",
        secret="sandbox-token",
        delay_ms=50,
        delivered=0.0,
        bounced=1.0,
    )

    notification = delivered(submit(channel="sms", to="+14155550124"))

    _wait_kinds(notification, ["sent", "undelivered"])
    assert NotificationEvent.objects.get(notification=notification, kind="undelivered").data["error_code"] == "30005"
    assert Suppression.objects.filter(channel="sms", address="+14155550124").exists()


def test_vonage_receipts_are_verified_and_stored(ledger, live_server, closed_breakers):
    ledger.set_fault("twilio", outage=True)  # the SMS goes out through the fallback, Vonage
    ledger.set_callbacks(
        "vonage",
        url=f"{live_server.url}/receipts/vonage",
        secret=settings.VONAGE_SIGNATURE_SECRET,
        delay_ms=50,
        delivered=1.0,
    )

    notification = delivered(submit(channel="sms", to="+14155550125"))

    assert notification.provider == "vonage"
    _wait_kinds(notification, ["sent", "delivered"])


def test_forged_or_stale_reports_are_refused_and_change_nothing(live_server):
    params = {"MessageSid": "SMforged", "MessageStatus": "delivered", "To": "+14155550126"}
    forged = requests.post(
        f"{live_server.url}/receipts/twilio", data=params, headers={"X-Twilio-Signature": "bm9wZQ=="}, timeout=5
    )
    unsigned = requests.post(f"{live_server.url}/receipts/twilio", data=params, timeout=5)
    stale = {"messageId": "0A0000001", "status": "delivered", "timestamp": str(int(time.time()) - 3600)}
    stale["sig"] = receipts.vonage_signature(settings.VONAGE_SIGNATURE_SECRET, stale)
    old = requests.post(f"{live_server.url}/receipts/vonage", data=stale, timeout=5)
    postmark = requests.post(
        f"{live_server.url}/anymail/postmark/tracking/",
        json={
            "RecordType": "Delivery",
            "MessageID": "x",
            "Recipient": "a@example.com",
            "DeliveredAt": "2026-12-06T00:00:00Z",
        },
        timeout=5,
    )

    assert (forged.status_code, unsigned.status_code, old.status_code) == (403, 403, 403)
    assert postmark.status_code in (400, 401, 403)
    assert not NotificationEvent.objects.exists()


def test_a_report_delivered_twice_is_stored_once(live_server, ledger, closed_breakers):
    notification = delivered(submit(channel="sms", to="+14155550127"))
    url = f"{live_server.url}/receipts/twilio"
    params = {"MessageSid": notification.provider_message_id, "MessageStatus": "delivered", "To": notification.to}
    signature = receipts.twilio_signature("sandbox-token", url, params)

    answers = [requests.post(url, data=params, headers={"X-Twilio-Signature": signature}, timeout=5) for _ in range(3)]

    assert [a.status_code for a in answers] == [204, 204, 204]
    assert _kinds(notification) == ["sent", "delivered"]


def test_a_report_before_our_sent_is_linked_after_it(ledger, closed_breakers):
    notification = submit(channel="sms", to="+14155550128")
    # The provider's report wins the race with our own UPDATE: it names a message id nobody has yet.
    early = receipts.Receipt("twilio", "SMearly0001", "delivered", "twilio:SMearly0001:delivered")
    assert receipts.receipts_record([early]) == 1
    assert receipts.receipts_record([early]) == 0, "a repeat is skipped"
    assert receipts.receipts_link() == 0
    Notification.objects.filter(pk=notification.pk).update(
        status="sent", provider="twilio", provider_message_id="SMearly0001"
    )

    assert receipts.receipts_link() == 1

    events = list(NotificationEvent.objects.filter(notification=notification).order_by("id"))
    assert [e.kind for e in events] == ["sent", "delivered"], "the timeline is in the order we learned things"
    assert not NotificationEvent.objects.filter(notification__isnull=True).exists()


def test_receipts_are_counted_per_provider_and_kind(client, ledger, live_server, closed_breakers):
    from tests.support.metrics import scrape, value

    before = value(scrape(client), "notify_receipts_total", provider="postmark", kind="delivered")
    _postmark_reports(ledger, live_server, delivered=1.0)
    notification = delivered(submit(to="counted@example.com"))
    _wait_kinds(notification, ["sent", "delivered"])

    assert value(scrape(client), "notify_receipts_total", provider="postmark", kind="delivered") == before + 1

"""Notification events and signed status webhooks: the timeline written by the status change itself, the API and
admin that show it, endpoints registered with clear refusals, and deliveries as durable jobs on real workers to the
sandbox's receiver, verified with the standardwebhooks package as a receiver would."""

import json
from collections import Counter

import pytest
from django.conf import settings
from django.db import transaction
from standardwebhooks import Webhook

from harness.waiting import wait_until
from jobs.durable import jobs_relay
from jobs.models import Job
from notifications.models import EventKind, Notification, NotificationEvent, WebhookEndpoint, WebhookOutbox
from notifications.webhooks import webhook_endpoint_create, webhook_send_test, webhooks_dispatch_all
from tests.support.sending import delivered, submit

pytestmark = pytest.mark.django_db(transaction=True)

RECEIVER = "receiver"


def _endpoint(**options) -> WebhookEndpoint:
    return webhook_endpoint_create(url=f"{settings.SANDBOX_HTTP_URL}/{RECEIVER}/hooks/app", event_kinds=[], **options)


def _deliveries(ledger) -> list[dict]:
    return ledger.entries(provider=RECEIVER)


def _verified(endpoint: WebhookEndpoint, entry: dict) -> dict:
    """The payload, once its signature checks out as a receiver would check it."""
    headers = {name: entry["headers"][name] for name in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    return Webhook(endpoint.secret).verify(entry["body"], headers)


def _pump_until(predicate, *, timeout: float = 60.0, what: str):
    """Dispatch and relay (what beat does) until `predicate` holds."""

    def step():
        webhooks_dispatch_all(budget_seconds=2)
        jobs_relay()
        return predicate()

    return wait_until(step, timeout=timeout, interval=0.3, what=what)


# --- events ----------------------------------------------------------------------------


def test_a_sent_notification_has_a_sent_event_written_by_its_status_change(ledger, closed_breakers):
    notification = delivered(submit())

    events = list(NotificationEvent.objects.filter(notification=notification))

    assert notification.status == "sent"
    assert [(e.kind, e.provider) for e in events] == [("sent", notification.provider)]
    assert events[0].data == {"provider_message_id": notification.provider_message_id}
    assert not WebhookOutbox.objects.exists(), "no endpoint: nothing waits for webhooks"


def test_a_dead_notification_has_a_failed_event_with_its_reason(ledger, closed_breakers):
    notification = delivered(submit(to="nobody@invalid.example"))

    assert notification.status == "dead"
    event = NotificationEvent.objects.get(notification=notification)
    assert event.kind == EventKind.FAILED and "invalid" in event.data["reason"]


def test_a_campaign_batch_writes_one_sent_event_per_row_in_its_statement(ledger, closed_breakers):
    from notifications.campaign_delivery import campaign_batch_send
    from notifications.models import CampaignBatch
    from tests.support.sending import fanned_out_campaign

    campaign = fanned_out_campaign("evts", count=5)
    for batch in CampaignBatch.objects.filter(campaign=campaign):
        campaign_batch_send(batch_id=batch.pk)

    rows = Notification.objects.filter(campaign=campaign)
    # Sent here, or by the suite's marketing workers when they run (the start published the batches).
    wait_until(lambda: rows.filter(status="sent").count() == 5, timeout=30, what="5 campaign rows sent")
    events = NotificationEvent.objects.filter(notification__in=rows)
    assert sorted(events.values_list("kind", flat=True)) == ["sent"] * 5
    assert {e.data["provider_message_id"] for e in events} == {n.provider_message_id for n in rows}


def test_the_timeline_is_served_by_the_api_and_shown_in_the_admin(api, admin_client, ledger, closed_breakers):
    response = api.post(
        "/api/v1/notifications",
        {
            "priority": "transactional",
            "channel": "email",
            "to": "ada@example.com",
            "template": "password_reset",
            "context": {"code": "123456"},
        },
    )
    notification = delivered(Notification.objects.get(pk=response.json()["id"]))

    timeline = api.get(f"/api/v1/notifications/{notification.pk}/events")

    assert timeline.status_code == 200
    body = timeline.json()
    assert body["status"] == "sent" and [e["kind"] for e in body["events"]] == ["sent"]
    assert api.get("/api/v1/notifications/00000000-0000-0000-0000-000000000000/events").status_code == 404
    page = admin_client.get(f"/admin/notifications/notification/{notification.pk}/change/")
    assert page.status_code == 200 and b"timeline" in page.content and b"<td>sent</td>" in page.content


# --- endpoints ---------------------------------------------------------------------------


@pytest.fixture
def webhook_admin_api(client, django_user_model):
    from django.contrib.auth.models import Permission

    from notifications.models import ApiToken

    user = django_user_model.objects.create_user(username="integrator", password="x")
    user.user_permissions.add(
        *Permission.objects.filter(
            codename__in=["add_webhookendpoint", "view_webhookendpoint", "delete_webhookendpoint", "send_test_webhook"]
        )
    )
    _, key = ApiToken.issue(user)
    return lambda method, path, body=None: getattr(client, method)(
        path,
        data=json.dumps(body) if body is not None else None,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Token {key}",
    )


def test_endpoints_are_registered_listed_tested_and_removed_through_the_api(webhook_admin_api, ledger):
    url = f"{settings.SANDBOX_HTTP_URL}/{RECEIVER}/hooks/app"
    created = webhook_admin_api("post", "/api/v1/webhooks", {"url": url, "event_kinds": ["sent", "failed"]})
    assert created.status_code == 201, created.content
    endpoint = created.json()
    assert endpoint["secret"].startswith("whsec_") and endpoint["event_kinds"] == ["failed", "sent"]
    assert [e["id"] for e in webhook_admin_api("get", "/api/v1/webhooks").json()] == [endpoint["id"]]

    tested = webhook_admin_api("post", f"/api/v1/webhooks/{endpoint['id']}/test")

    assert tested.status_code == 200 and tested.json()["delivered"] is True
    (entry,) = _deliveries(ledger)
    payload = _verified(WebhookEndpoint.objects.get(pk=endpoint["id"]), entry)
    assert payload["type"] == "webhook.test"
    assert webhook_admin_api("delete", f"/api/v1/webhooks/{endpoint['id']}").status_code == 204
    assert webhook_admin_api("delete", f"/api/v1/webhooks/{endpoint['id']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "not a url"}, "url"),
        ({"url": "http://127.0.0.1:9/x", "event_kinds": ["teleported"]}, "event_kinds"),
        ({"url": "http://127.0.0.1:9/x", "rate_per_second": 0}, "rate_per_second"),
        ({"url": "http://127.0.0.1:9/x", "colour": "red"}, "colour"),
    ],
)
def test_a_bad_endpoint_is_refused_with_its_field_and_nothing_is_written(webhook_admin_api, body, field):
    response = webhook_admin_api("post", "/api/v1/webhooks", body)

    assert response.status_code == 400, response.content
    assert field in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_without_private_addresses_an_endpoint_inside_the_network_is_refused(webhook_admin_api, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE_ADDRESSES = False
    for url, reason in (("http://example.com/x", "https"), ("https://127.0.0.1/x", "non-public address")):
        response = webhook_admin_api("post", "/api/v1/webhooks", {"url": url})
        assert response.status_code == 400 and reason in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_a_test_event_to_a_failing_endpoint_says_so(ledger):
    ledger.set_fault(RECEIVER, error_rate=1.0, status=500)
    ok, detail = webhook_send_test(endpoint=_endpoint())
    assert ok is False and "HTTP 500" in detail


# --- deliveries through real workers ------------------------------------------------------


def test_each_event_reaches_the_endpoint_once_signed(workers, ledger, closed_breakers):
    endpoint = _endpoint()
    notifications = [submit(to=f"user{i}@example.com") for i in range(10)]
    wait_until(
        lambda: Notification.objects.filter(pk__in=[n.pk for n in notifications], status="sent").count() == 10,
        timeout=30,
        what="10 notifications sent",
    )

    _pump_until(lambda: len(_deliveries(ledger)) >= 10, what="10 webhook deliveries")

    entries = _deliveries(ledger)
    assert len(entries) == 10
    payloads = [_verified(endpoint, entry) for entry in entries]
    assert {p["data"]["notification_id"] for p in payloads} == {str(n.pk) for n in notifications}
    assert {p["type"] for p in payloads} == {"notification.sent"}
    assert len({e["idempotency_key"] for e in entries}) == 10
    assert Job.objects.filter(name="notifications.webhook_deliver", status="succeeded").count() == 10


def test_a_receiver_down_then_flaky_gets_every_event_once_in_order_per_notification(workers, ledger, closed_breakers):
    endpoint = _endpoint(rate_per_second=200)
    other = webhook_endpoint_create(url=f"{settings.SANDBOX_HTTP_URL}/other/hooks/app", event_kinds=["delivered"])
    ledger.set_fault(RECEIVER, outage=True)
    notification_ids = [delivered(submit(to=f"flaky{i}@example.com")).pk for i in range(12)]
    # The provider's reports after our own "sent" (what receipts write): three more events per notification.
    with transaction.atomic():
        for kind in (EventKind.DELIVERED, EventKind.OPENED, EventKind.CLICKED):
            NotificationEvent.objects.bulk_create(
                NotificationEvent(notification_id=pk, kind=kind, provider="postmark") for pk in notification_ids
            )
    expected = {e.pk: e for e in NotificationEvent.objects.filter(notification_id__in=notification_ids)}
    assert len(expected) == 48

    _pump_until(
        lambda: Job.objects.filter(name="notifications.webhook_deliver", last_error__contains="breaker").exists(),
        what="the receiver's breaker open",
    )
    # The other endpoint is not held up by this one's breaker.
    _pump_until(lambda: len(ledger.entries(provider="other")) == 12, what="the other endpoint's 12 deliveries")
    ledger.clear_faults(RECEIVER)
    ledger.set_fault(RECEIVER, error_rate=0.5, status=500)

    _pump_until(lambda: len(_deliveries(ledger)) >= 48, timeout=120, what="48 deliveries")
    ledger.clear_faults()

    entries = _deliveries(ledger)
    ids = Counter(entry["idempotency_key"] for entry in entries)
    assert set(ids) == {f"evt_{pk}" for pk in expected} and max(ids.values()) == 1, "every event exactly once"
    by_notification: dict[str, list[int]] = {}
    for entry in entries:
        payload = _verified(endpoint, entry)
        by_notification.setdefault(payload["data"]["notification_id"], []).append(
            int(entry["idempotency_key"].removeprefix("evt_"))
        )
    for events in by_notification.values():
        assert events == sorted(events), "one notification's events arrive in order"
    other_payloads = [_verified(other, entry) for entry in ledger.entries(provider="other")]
    assert {p["type"] for p in other_payloads} == {"notification.delivered"}

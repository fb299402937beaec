"""One-click unsubscribe (RFC 8058): marketing e-mail carries the headers, and the link withdraws consent."""

import pytest

from notifications.delivery import notification_deliver
from notifications.models import Recipient
from notifications.services import notification_send
from notifications.unsubscribe import unsubscribe_url

pytestmark = pytest.mark.django_db


def send(ledger, priority: str):
    notification, _ = notification_send(
        priority=priority, channel="email", template="newsletter", to="ada@example.com",
        context={"headline": "News", "body": "Hello"},
    )  # fmt: skip
    notification_deliver(notification_ids=[str(notification.pk)])
    (entry,) = ledger.entries(idempotency_key=notification.idempotency_key)
    return notification, entry


def test_marketing_email_carries_one_click_unsubscribe_headers_that_work(client, ledger):
    notification, entry = send(ledger, "marketing")
    headers = {k.lower(): v for k, v in entry["headers"].items()}
    assert headers["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
    url = headers["list-unsubscribe"].strip("<>")
    Recipient.objects.filter(pk=notification.recipient_id).update(email_marketing_consent=True)

    path = url.split("://", 1)[1].split("/", 1)[1]
    response = client.post(
        f"/{path}", data="List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded"
    )

    assert response.status_code == 200
    assert Recipient.objects.get(pk=notification.recipient_id).email_marketing_consent is False


def test_transactional_email_has_no_unsubscribe_header(ledger):
    _, entry = send(ledger, "transactional")
    assert "list-unsubscribe" not in {k.lower() for k in entry["headers"]}


def test_opening_the_link_asks_and_changes_nothing(client):
    recipient = Recipient.objects.create(email="bob@example.com", email_marketing_consent=True)
    path = "/" + unsubscribe_url(recipient_id=recipient.pk, channel="email").split("://", 1)[1].split("/", 1)[1]
    response = client.get(path)
    assert response.status_code == 200 and b"Unsubscribe from marketing" in response.content
    assert Recipient.objects.get(pk=recipient.pk).email_marketing_consent is True


def test_a_forged_link_is_refused_and_changes_nothing(client):
    recipient = Recipient.objects.create(email="eve@example.com", email_marketing_consent=True)
    path = "/" + unsubscribe_url(recipient_id=recipient.pk, channel="email").split("://", 1)[1].split("/", 1)[1]
    response = client.post(path[:-3] + "abc")
    assert response.status_code == 400
    assert Recipient.objects.get(pk=recipient.pk).email_marketing_consent is True

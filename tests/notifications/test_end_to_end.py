"""End to end: HTTP API and password-reset page -> PostgreSQL -> Redis -> real worker pools -> sandbox."""

import re

import pytest
import requests

from harness.waiting import wait_until
from notifications.models import Notification

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PASSWORD_RESET = {"template": "password_reset", "context": {"code": "424242"}}


def wait_until_done(ids: list[str], timeout: float = 30.0) -> dict[str, Notification]:
    """The rows once each is sent, failed or dead, or as they are when `timeout` is up."""

    def rows() -> dict[str, Notification]:
        return {str(n.pk): n for n in Notification.objects.filter(pk__in=ids)}

    def done() -> bool:
        now = rows()
        return all(now[i].status in ("sent", "failed", "dead") for i in ids)

    wait_until(done, timeout=timeout)
    return rows()


@pytest.fixture
def live_api(live_server, api_key):
    session = requests.Session()
    session.headers["Authorization"] = f"Token {api_key}"
    session.base_url = live_server.url
    yield session
    # A kept-alive connection keeps a live-server thread (and its database session) alive.
    session.close()


@pytest.mark.parametrize(
    ("priority", "channel", "to", "provider"),
    [
        ("security", "email", "ada@example.com", "postmark"),
        ("transactional", "sms", "+14155550100", "twilio"),
        ("marketing", "push", "device-token-0123456789", "fcm"),
    ],
)
def test_api_submission_is_delivered_exactly_once(workers, ledger, live_api, priority, channel, to, provider):
    response = live_api.post(
        f"{live_api.base_url}/api/v1/notifications",
        json={"priority": priority, "channel": channel, "to": to, **PASSWORD_RESET},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    notification_id = response.json()["id"]

    notification = wait_until_done([notification_id])[notification_id]

    assert notification.status == "sent", notification.last_error
    assert notification.provider == provider
    entries = ledger.entries(idempotency_key=notification.idempotency_key)
    assert len(entries) == 1
    assert entries[0]["provider"] == provider and entries[0]["to"] == to
    assert entries[0]["message_id"] == notification.provider_message_id
    assert notification.attempts == 1 and notification.queued_at and notification.sent_at
    status = live_api.get(response.json()["status_url"], timeout=10).json()
    assert status["status"] == "sent" and status["provider"] == provider


def test_password_reset_page_sends_a_security_email(workers, ledger, live_server):
    browser = requests.Session()
    page = browser.get(f"{live_server.url}/password-reset/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    done = browser.post(
        f"{live_server.url}/password-reset/",
        data={"email": "grace@example.com", "csrfmiddlewaretoken": token},
        headers={"Referer": f"{live_server.url}/password-reset/"},
        timeout=10,
    )
    assert done.status_code == 200
    notification_id = str(Notification.objects.get(to="grace@example.com").pk)

    notification = wait_until_done([notification_id])[notification_id]

    assert notification.status == "sent"
    assert (notification.priority, notification.channel) == ("security", "email")
    (entry,) = ledger.entries(idempotency_key=notification.idempotency_key)
    assert entry["to"] == "grace@example.com"
    assert re.search(r"\b\d{6}\b", entry["body"]), "the code is in the message"


def test_password_reset_page_refuses_a_bad_address(live_server):
    browser = requests.Session()
    page = browser.get(f"{live_server.url}/password-reset/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = browser.post(
        f"{live_server.url}/password-reset/",
        data={"email": "not an address", "csrfmiddlewaretoken": token},
        headers={"Referer": f"{live_server.url}/password-reset/"},
        timeout=10,
    )
    assert response.status_code == 400
    assert "Enter a valid email address" in response.text
    assert Notification.objects.count() == 0


def test_a_burst_is_sent_exactly_once_each(workers, ledger, live_api):
    ids = []
    for i in range(60):
        response = live_api.post(
            f"{live_api.base_url}/api/v1/notifications",
            json={"priority": "transactional", "channel": "email", "to": f"user{i}@example.com", **PASSWORD_RESET},
            timeout=10,
        )
        assert response.status_code == 202
        ids.append(response.json()["id"])

    rows = wait_until_done(ids, timeout=60)

    assert sorted(n.status for n in rows.values()) == ["sent"] * len(ids)
    keys = [n.idempotency_key for n in rows.values()]
    entries = ledger.entries(provider="postmark")
    assert sorted(e["idempotency_key"] for e in entries) == sorted(keys)


def test_permanent_provider_refusal_is_dead_lettered_at_once_without_retry(workers, ledger, live_api):
    from jobs.models import DeadLetter

    response = live_api.post(
        f"{live_api.base_url}/api/v1/notifications",
        json={"priority": "transactional", "channel": "sms", "to": "+15005550001", **PASSWORD_RESET},
        timeout=10,
    )
    notification_id = response.json()["id"]

    notification = wait_until_done([notification_id])[notification_id]

    assert notification.status == "dead"
    assert notification.attempts == 1
    letter = DeadLetter.objects.get(subject_id=notification_id)
    assert letter.error_class == "jobs.errors.PermanentError"
    assert "21211" in letter.message and letter.dependency == "twilio"
    assert ledger.entries(provider="twilio") == []


def test_the_workers_logs_carry_no_address_in_clear(workers, ledger, live_api):
    from harness.chaos.stack import UNMASKED

    # The vendor refuses it, and its error text (logged with the dead letter) names the address.
    response = live_api.post(
        f"{live_api.base_url}/api/v1/notifications",
        json={"priority": "transactional", "channel": "email", "to": "nobody-here@invalid.example", **PASSWORD_RESET},
        timeout=10,
    )
    notification_id = response.json()["id"]
    assert wait_until_done([notification_id])[notification_id].status == "dead"

    log = workers["transactional"].output()
    assert "n***@invalid.example" in log, "the address was logged, masked"
    assert not [line for line in log.splitlines() if UNMASKED.search(line)]

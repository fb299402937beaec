"""Abuse of the triggers: the public password-reset page and the admin log-in are throttled on the real Redis;
a throttled request is answered like any other (no enumeration) and writes nothing."""

import pytest
from django.test import Client

from jobs.redis import redis_client
from notifications.models import Notification, Recipient
from tests.support.api import make_sender

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_throttles():
    def reset() -> None:
        for key in redis_client().scan_iter("jobs:throttle:*"):
            redis_client().delete(key)

    reset()
    yield
    reset()


def reset_request(client: Client, email: str, ip: str = "203.0.113.7", **headers):
    return client.post("/password-reset/", {"email": email}, REMOTE_ADDR=ip, **headers)


def test_a_fourth_reset_for_one_address_gets_the_same_page_and_sends_nothing(client):
    answers = [reset_request(client, "victim@example.com") for _ in range(6)]

    assert [a.status_code for a in answers] == [200] * 6
    assert len({a.content for a in answers}) == 1, "a throttled answer looks exactly like a sent one"
    assert Notification.objects.filter(to="victim@example.com").count() == 3


def test_one_client_ip_gets_twenty_resets_an_hour_whatever_the_addresses(client):
    for i in range(25):
        assert reset_request(client, f"someone{i}@example.com", ip="198.51.100.9").status_code == 200
    assert Notification.objects.count() == 20
    assert Recipient.objects.count() == 20, "a throttled request writes no row, not even a recipient"
    assert reset_request(client, "fresh@example.com", ip="198.51.100.10").status_code == 200
    assert Notification.objects.count() == 21, "another client is not held back"


def test_a_forged_forwarded_for_header_does_not_escape_the_ip_throttle(client, settings):
    settings.TRUSTED_PROXY_HOPS = 0
    for i in range(22):
        reset_request(client, f"forged{i}@example.com", ip="192.0.2.1", HTTP_X_FORWARDED_FOR=f"10.0.0.{i}")
    assert Notification.objects.count() == 20


def test_behind_a_trusted_proxy_the_client_address_it_saw_is_throttled(client, settings):
    settings.TRUSTED_PROXY_HOPS = 1
    for i in range(22):
        # The client may put anything in front; the proxy appends the address it saw.
        reset_request(client, f"proxied{i}@example.com", ip="10.0.0.2", HTTP_X_FORWARDED_FOR=f"1.2.3.{i}, 192.0.2.50")
    assert Notification.objects.count() == 20


def test_password_guessing_on_the_admin_log_in_is_answered_429_after_five_tries(client, django_user_model):
    django_user_model.objects.create_superuser(username="root", password="correct horse", email="r@example.com")
    answers = [
        client.post("/admin/login/", {"username": "root", "password": f"guess {i}"}, REMOTE_ADDR="192.0.2.66")
        for i in range(20)
    ]

    codes = [a.status_code for a in answers]
    assert codes[:5] == [200] * 5, "wrong passwords are answered with the form again"
    assert set(codes[5:]) == {429}
    assert int(answers[-1]["Retry-After"]) >= 1
    right = client.post("/admin/login/", {"username": "root", "password": "correct horse"}, REMOTE_ADDR="192.0.2.66")
    assert right.status_code == 429, "not even the right password is checked while throttled"
    other = client.post("/admin/login/", {"username": "ops", "password": "x"}, REMOTE_ADDR="192.0.2.67")
    assert other.status_code == 200


# --- the API: sending is a permission per priority, tokens have a request rate and daily quotas --------

URL = "/api/v1/notifications"


def body(priority: str, to: str = "ada@example.com") -> dict:
    return {
        "priority": priority,
        "channel": "email",
        "template": "password_reset",
        "to": to,
        "context": {"code": "123456"},
    }


def post(client: Client, key: str, payload: dict):
    return client.post(URL, data=payload, content_type="application/json", HTTP_AUTHORIZATION=f"Token {key}")


def test_a_token_whose_user_may_not_send_is_refused_403_and_nothing_is_stored(client, django_user_model):
    _, key = make_sender(django_user_model, "reader", permissions=())

    answer = post(client, key, body("security"))

    assert answer.status_code == 403
    assert "notifications.add_notification" in answer.json()["error"]
    assert not Notification.objects.exists()


def test_each_priority_is_a_permission_of_its_own(client, django_user_model):
    _, key = make_sender(django_user_model, "shop", permissions=("add_notification", "send_transactional"))

    assert post(client, key, body("transactional")).status_code == 202
    refused = post(client, key, body("marketing", to="grace@example.com"))
    assert refused.status_code == 403 and "notifications.send_marketing" in refused.json()["error"]
    assert Notification.objects.count() == 1


def test_security_needs_a_token_allowed_to_send_it_whatever_its_users_permissions(client, django_user_model):
    _, key = make_sender(django_user_model, "app", may_send_security=False)

    refused = post(client, key, body("security"))

    assert refused.status_code == 403 and "may not send security" in refused.json()["error"]
    assert post(client, key, body("transactional")).status_code == 202


def test_a_daily_quota_per_priority_answers_429_with_retry_after_when_used_up(client, django_user_model):
    user, key = make_sender(django_user_model, "quota")
    user.api_tokens.update(daily_quota_transactional=2)

    codes = [post(client, key, body("transactional", to=f"q{i}@example.com")).status_code for i in range(3)]

    assert codes == [202, 202, 429]
    last = post(client, key, body("transactional", to="q9@example.com"))
    assert last.status_code == 429 and int(last["Retry-After"]) > 3600 and "quota" in last.json()["error"]
    assert post(client, key, body("security", to="s@example.com")).status_code == 202, "other priorities unaffected"
    assert Notification.objects.filter(priority="transactional").count() == 2


def test_a_token_making_too_many_requests_gets_429_json_with_retry_after(client, django_user_model, settings):
    settings.API_TOKEN_THROTTLE = (3, 60)
    _, key = make_sender(django_user_model, "chatty")

    answers = [
        client.get(f"{URL}/00000000-0000-0000-0000-000000000000", HTTP_AUTHORIZATION=f"Token {key}") for _ in range(4)
    ]

    assert [a.status_code for a in answers] == [404, 404, 404, 429]
    assert answers[-1]["Content-Type"].startswith("application/json")
    assert int(answers[-1]["Retry-After"]) >= 1 and "too many requests" in answers[-1].json()["error"]

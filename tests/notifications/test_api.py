"""The HTTP API's contract: 202 with a status URL, idempotency, and 400/401/413 that store and enqueue nothing."""

import pytest

from notifications.models import Notification, Recipient
from tests.support.api import make_sender

URL = "/api/v1/notifications"
VALID = {
    "priority": "security",
    "channel": "email",
    "template": "password_reset",
    "to": "ada@example.com",
    "context": {"code": "123456"},
}

pytestmark = pytest.mark.django_db


def test_valid_request_is_accepted_with_status_url_and_published_after_commit(api, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = api.post(URL, VALID)
    assert response.status_code == 202
    body = response.json()
    notification = Notification.objects.get(pk=body["id"])
    assert body["status"] == "queued"
    assert body["status_url"].endswith(f"/api/v1/notifications/{notification.pk}")
    assert response["Location"] == body["status_url"]
    assert (notification.priority, notification.channel, notification.to) == ("security", "email", "ada@example.com")
    assert notification.recipient.email == "ada@example.com"
    assert len(callbacks) == 1


def test_status_endpoint_shows_the_documented_fields(api):
    created = api.post(URL, VALID).json()
    response = api.get(f"{URL}/{created['id']}")
    assert response.status_code == 200
    body = response.json()
    for field in ("id", "status", "priority", "channel", "provider", "attempts", "created_at", "sent_at", "last_error"):
        assert field in body
    assert body["id"] == created["id"] and body["attempts"] == 0


def test_same_idempotency_key_returns_the_same_notification_and_code(api):
    first = api.post(URL, VALID, HTTP_IDEMPOTENCY_KEY="reset-42")
    second = api.post(URL, VALID, HTTP_IDEMPOTENCY_KEY="reset-42")
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert Notification.objects.count() == 1


def test_idempotency_key_reused_for_another_request_is_refused(api):
    api.post(URL, VALID, HTTP_IDEMPOTENCY_KEY="reset-43")
    response = api.post(URL, {**VALID, "to": "bob@example.com"}, HTTP_IDEMPOTENCY_KEY="reset-43")
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["errors"]
    assert Notification.objects.count() == 1


def test_two_clients_may_use_the_same_key(api, client, django_user_model):
    _, other_key = make_sender(django_user_model, "other")
    api.post(URL, VALID, HTTP_IDEMPOTENCY_KEY="k1")
    response = client.post(
        URL,
        data=VALID,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Token {other_key}",
        HTTP_IDEMPOTENCY_KEY="k1",
    )
    assert response.status_code == 202
    assert Notification.objects.count() == 2


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"priority": "urgent"}, "priority", "unknown priority"),
        ({"channel": "fax"}, "channel", "unknown channel"),
        ({"template": "nope"}, "template", "unknown template"),
        ({"to": "not-an-address"}, "to", "not a valid e-mail address"),
        ({"channel": "sms", "to": "0044123"}, "to", "E.164"),
        ({"context": {}}, "context", "missing variable(s) for template 'password_reset': code"),
        ({"context": "code=1"}, "context", "must be an object"),
        ({"priority": 3}, "priority", "must be a string"),
        ({"recipient_id": True, "to": None}, "recipient_id", "must be an integer"),
        ({"colour": "blue"}, "colour", "unknown field"),
        ({"to": None}, "to", "give 'to'"),
        ({"priority": None}, "priority", "required"),
    ],
)
def test_bad_input_is_400_with_field_and_reason_and_changes_nothing(
    api, django_capture_on_commit_callbacks, change, field, reason
):
    body = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    with django_capture_on_commit_callbacks() as callbacks:
        response = api.post(URL, body)
    assert response.status_code == 400, response.content
    errors = response.json()["errors"]
    assert field in errors and reason in errors[field], errors
    assert Notification.objects.count() == 0
    assert Recipient.objects.count() == 0
    assert callbacks == []


def test_malformed_json_is_400(api):
    response = api.post(URL, '{"priority": "security",')
    assert response.status_code == 400
    assert "body" in response.json()["errors"]
    assert Notification.objects.count() == 0


def test_body_that_is_not_an_object_is_400(api):
    response = api.post(URL, "[1, 2]")
    assert response.status_code == 400
    assert response.json()["errors"]["body"] == "must be a JSON object"


def test_oversized_body_is_413_and_stores_nothing(api, settings):
    body = {**VALID, "context": {"code": "1", "padding": "x" * (settings.API_MAX_BODY_BYTES + 10)}}
    response = api.post(URL, body)
    assert response.status_code == 413
    assert Notification.objects.count() == 0


@pytest.mark.parametrize("header", [None, "Token wrong", "Bearer abc", "Token "])
def test_missing_or_wrong_token_is_401(client, header):
    extra = {"HTTP_AUTHORIZATION": header} if header is not None else {}
    response = client.post(URL, data=VALID, content_type="application/json", **extra)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert Notification.objects.count() == 0


def test_revoked_token_is_401(client, api_user):
    from django.utils import timezone

    from notifications.models import ApiToken

    token, key = ApiToken.issue(api_user)
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    response = client.post(URL, data=VALID, content_type="application/json", HTTP_AUTHORIZATION=f"Token {key}")
    assert response.status_code == 401


def test_permissions_given_through_a_group_count_and_missing_ones_are_403(client, django_user_model):
    """The token's query reads the user's own and group permissions at once (ModelBackend's cache)."""
    from django.contrib.auth.models import Group, Permission

    from notifications.models import ApiToken
    from tests.support.api import SENDER_PERMISSIONS

    senders = Group.objects.create(name="senders")
    senders.permissions.add(*Permission.objects.filter(codename__in=SENDER_PERMISSIONS))
    member = django_user_model.objects.create_user(username="member")
    member.groups.add(senders)
    _, key = ApiToken.issue(member, may_send_security=True)
    response = client.post(URL, data=VALID, content_type="application/json", HTTP_AUTHORIZATION=f"Token {key}")
    assert response.status_code == 202

    senders.permissions.remove(Permission.objects.get(codename="send_security"))
    response = client.post(URL, data=VALID, content_type="application/json", HTTP_AUTHORIZATION=f"Token {key}")
    assert response.status_code == 403
    assert "send_security" in response.json()["error"]


def test_a_token_of_an_inactive_user_is_401(client, api_user):
    from notifications.models import ApiToken

    _, key = ApiToken.issue(api_user, may_send_security=True)
    api_user.is_active = False
    api_user.save()
    response = client.post(URL, data=VALID, content_type="application/json", HTTP_AUTHORIZATION=f"Token {key}")
    assert response.status_code == 401


def test_unknown_notification_is_404(api):
    assert api.get(f"{URL}/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api.get(f"{URL}/not-a-uuid").status_code == 404


def test_a_client_cannot_read_another_clients_notification(api, client, django_user_model):
    from notifications.models import ApiToken

    created = api.post(URL, VALID).json()
    stranger = django_user_model.objects.create_user(username="stranger")
    _, key = ApiToken.issue(stranger)
    response = client.get(f"{URL}/{created['id']}", HTTP_AUTHORIZATION=f"Token {key}")
    assert response.status_code == 404


def test_recipient_id_sends_to_that_recipients_address(api):
    recipient = Recipient.objects.create(phone="+14155550100")
    body = {"priority": "transactional", "channel": "sms", "template": "password_reset", "context": {"code": "1"}}
    response = api.post(URL, {**body, "recipient_id": recipient.pk})
    assert response.status_code == 202
    assert Notification.objects.get(pk=response.json()["id"]).to == "+14155550100"


def test_get_is_not_allowed_on_the_collection(api):
    assert api.get(URL).status_code == 405


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_idempotency_key_make_one_notification(api_key):
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection
    from django.test import Client

    def submit(_: int) -> tuple[int, str]:
        try:
            response = Client().post(
                URL,
                data=VALID,
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Token {api_key}",
                HTTP_IDEMPOTENCY_KEY="same-key-for-all",
            )
            return response.status_code, response.json()["id"]
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(submit, range(40)))

    assert {status for status, _ in results} == {202}
    assert len({notification_id for _, notification_id in results}) == 1
    assert Notification.objects.count() == 1
    assert Recipient.objects.count() == 1

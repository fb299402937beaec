"""Input as an outside tester sends it: NUL, NaN, lone surrogates, wrong types, unknown variables and odd addresses
are a 400 (API) or a form error (admin) naming the field, and store nothing."""

import pytest

from notifications.models import Notification

pytestmark = pytest.mark.django_db
URL = "/api/v1/notifications"
ADD_URL = "/admin/notifications/notification/add/"


def raw_body(context: str, to: str = '"ada@example.com"') -> str:
    return (
        '{"priority": "transactional", "channel": "email", "template": "password_reset", '
        f'"to": {to}, "context": {context}}}'
    )


@pytest.mark.parametrize(
    ("context", "field", "reason"),
    [
        (r'{"code": "12\u00003"}', "context.code", "U+0000"),
        (r'{"code": "\ud800"}', "context.code", "U+D800"),
        ('{"code": NaN}', "body", "NaN is not a JSON number"),
        ('{"code": Infinity}', "body", "Infinity is not a JSON number"),
        ('{"code": null}', "context.code", "must be a string"),
        ('{"code": [1, 2]}', "context.code", "must be a string"),
        ('{"code": {"a": 1}}', "context.code", "must be a string"),
        ('{"code": "not a code!"}', "context.code", "letters or digits"),
        ('{"code": "123456", "extra": "x"}', "context.extra", "has no variable 'extra'"),
    ],
)
def test_a_bad_context_is_400_naming_the_field_and_stores_nothing(api, context, field, reason):
    response = api.post(URL, raw_body(context))

    assert response.status_code == 400, response.content
    assert reason in response.json()["errors"][field]
    assert not Notification.objects.exists()


@pytest.mark.parametrize(
    ("to", "reason"),
    [
        ('"' + "a" * 65 + '@example.com"', "at most 64 characters before the @"),
        ('"ada@[192.0.2.1]"', "IP literal"),
        (r'"ada\u0000@example.com"', "U+0000"),
    ],
)
def test_an_address_real_mail_systems_refuse_is_400(api, to, reason):
    response = api.post(URL, raw_body('{"code": "123456"}', to=to))

    assert response.status_code == 400, response.content
    assert reason in response.json()["errors"]["to"]
    assert not Notification.objects.exists()


@pytest.mark.parametrize(
    ("context_json", "reason"),
    [
        (r'{"code": "\u0000"}', "U+0000"),
        (r'{"code": "\ud800"}', "U+D800"),
        ('{"code": NaN}', "NaN is not a JSON number"),
        ('{"code": [1, 2]}', "code: must be a string"),
        ('{"code": "123456", "extra": "x"}', "extra: template"),
    ],
)
def test_the_admin_add_form_refuses_the_same_input_with_the_reason(admin_client, context_json, reason):
    response = admin_client.post(
        ADD_URL,
        {
            "priority": "transactional",
            "channel": "email",
            "template": "password_reset",
            "to": "ada@example.com",
            "context_json": context_json,
        },
    )

    assert response.status_code == 200
    assert reason in response.content.decode().replace("&#x27;", "'")
    assert not Notification.objects.exists()


def test_a_campaign_context_is_held_to_its_templates_declaration(api_user, client):
    from django.contrib.auth.models import Permission

    from notifications.models import ApiToken

    api_user.user_permissions.add(Permission.objects.get(codename="add_campaign"))
    _, key = ApiToken.issue(api_user)
    response = client.post(
        "/api/v1/campaigns",
        data='{"name": "n", "template": "newsletter", "channel": "email", "context": {"headline": 1, "body": "b"}}',
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Token {key}",
    )

    assert response.status_code == 400
    assert response.json()["errors"]["context.headline"] == "must be a string"

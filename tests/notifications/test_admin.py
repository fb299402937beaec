"""Triggering from the admin: the add form goes through notification_send and shows its errors."""

import pytest

from notifications.models import Notification

pytestmark = pytest.mark.django_db
ADD_URL = "/admin/notifications/notification/add/"


def form(**overrides) -> dict:
    return {
        "priority": "transactional",
        "channel": "sms",
        "template": "order_shipped",
        "to": "+14155550199",
        "context_json": '{"order_number": "A-1"}',
        **overrides,
    }


def test_admin_add_form_creates_and_publishes_a_notification(admin_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_client.post(ADD_URL, form())
    assert response.status_code == 302
    notification = Notification.objects.get()
    assert (notification.channel, notification.to, notification.context) == (
        "sms",
        "+14155550199",
        {"order_number": "A-1"},
    )
    assert len(callbacks) == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"context_json": "{}"}, "missing variable(s) for template &#x27;order_shipped&#x27;: order_number"),
        ({"context_json": "{not json"}, "not valid JSON"),
        ({"to": "12345"}, "is not an E.164 phone number"),
    ],
)
def test_admin_add_form_shows_the_reason_and_creates_nothing(admin_client, overrides, message):
    response = admin_client.post(ADD_URL, form(**overrides))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert Notification.objects.count() == 0


def test_notifications_cannot_be_edited_in_the_admin(admin_client):
    admin_client.post(ADD_URL, form())
    notification = Notification.objects.get()
    response = admin_client.post(f"/admin/notifications/notification/{notification.pk}/change/", {"status": "sent"})
    notification.refresh_from_db()
    assert notification.status == "pending"
    assert response.status_code in (200, 403)

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
    assert notification.status == "queued"
    assert response.status_code in (200, 403)


def test_the_notification_list_shows_one_word_per_status_and_the_description_on_hover(admin_client):
    import re

    admin_client.post(ADD_URL, form())
    notification = Notification.objects.get()

    page = admin_client.get("/admin/notifications/notification/").content.decode()

    cell = re.search(r'<td class="field-status_short">(.*?)</td>', page).group(1)
    assert cell == '<span title="queued (published to its queue)">queued</span>'
    detail = admin_client.get(f"/admin/notifications/notification/{notification.pk}/change/").content.decode()
    assert "queued (published to its queue)" in detail


CAMPAIGN_ADD_URL = "/admin/notifications/campaign/add/"


def campaign_form(**overrides) -> dict:
    return {
        "name": "Spring sale",
        "template": "newsletter",
        "channel": "email",
        "context_json": '{"headline": "Spring", "body": "Hello"}',
        "audience_locale": "",
        "audience_tag": "",
        **overrides,
    }


def test_a_campaign_is_created_in_the_admin_and_started_by_an_action(admin_client):
    from notifications.models import Campaign, Recipient

    Recipient.objects.create(email="r@example.com", email_marketing_consent=True)
    assert admin_client.post(CAMPAIGN_ADD_URL, campaign_form()).status_code == 302
    campaign = Campaign.objects.get()
    assert campaign.status == "draft" and campaign.context == {"headline": "Spring", "body": "Hello"}

    response = admin_client.post(
        "/admin/notifications/campaign/",
        {"action": "start", "_selected_action": [campaign.pk]},
        follow=True,
    )

    assert "Started 1 campaign(s)" in response.content.decode()
    campaign.refresh_from_db()
    assert campaign.status == "running" and campaign.segments_total == 1


def test_the_campaign_list_shows_progress_rate_and_time_to_finish(admin_client):
    from notifications.models import Campaign

    Campaign.objects.create(
        name="Big one", template="newsletter", channel="email", status="running",
        materialized_count=1000, sent_count=250, dead_count=5, skipped_count=45, segments_total=1, segments_done=1,
    )  # fmt: skip
    page = admin_client.get("/admin/notifications/campaign/").content.decode()
    assert '<progress class="campaign-progress" value="300" max="1000"' in page
    assert "250 sent · 5 failed · 45 skipped · 700 remaining" in page
    assert "Send rate" in page and "Time to finish" in page


def test_a_campaign_with_a_bad_context_is_refused_with_the_reason(admin_client):
    from notifications.models import Campaign

    response = admin_client.post(CAMPAIGN_ADD_URL, campaign_form(context_json='{"headline": "x"}'))
    assert response.status_code == 200
    assert "missing variable(s)" in response.content.decode()
    assert not Campaign.objects.exists()


def test_staff_who_may_add_but_not_send_security_cannot_send_it_from_the_admin(client, django_user_model):
    from django.contrib.auth.models import Permission

    clerk = django_user_model.objects.create_user(username="clerk", password="x", is_staff=True)
    clerk.user_permissions.add(
        *Permission.objects.filter(codename__in=["add_notification", "view_notification", "send_transactional"])
    )
    client.force_login(clerk)

    refused = client.post(ADD_URL, form(priority="security"))
    assert refused.status_code == 200 and "you may not send security notifications" in refused.content.decode()
    assert Notification.objects.count() == 0
    assert client.post(ADD_URL, form()).status_code == 302
    assert Notification.objects.count() == 1

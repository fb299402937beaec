"""The campaign API: create (201), start / pause / resume / cancel (202 at once, 409 when the state forbids it),
progress; 400 names the field and changes nothing; 403 without the model permission."""

import pytest
from django.contrib.auth.models import Permission

from notifications.models import Campaign, CampaignSegment, Recipient

pytestmark = pytest.mark.django_db

BODY = {
    "name": "Spring sale",
    "template": "newsletter",
    "channel": "email",
    "context": {"headline": "Spring", "body": "20 % off"},
    "audience": {"locale": "de", "tag": "vip"},
}


@pytest.fixture
def marketer(api_user):
    api_user.user_permissions.add(
        *Permission.objects.filter(codename__in=["add_campaign", "change_campaign", "view_campaign"])
    )
    return api_user


def test_creating_a_campaign_needs_the_permission(api):
    response = api.post("/api/v1/campaigns", BODY)
    assert response.status_code == 403 and "add_campaign" in response.json()["error"]
    assert not Campaign.objects.exists()
    unread = api.post("/api/v1/campaigns", {"budget": 5})
    assert unread.status_code == 403, "without the permission the body is not even read"


def test_a_campaign_is_created_as_a_draft(api, marketer):
    response = api.post("/api/v1/campaigns", BODY)

    assert response.status_code == 201, response.content
    body = response.json()
    campaign = Campaign.objects.get(pk=body["id"])
    assert (campaign.status, campaign.audience_locale, campaign.audience_tag) == ("draft", "de", "vip")
    assert campaign.created_by == marketer
    assert body["status"] == "draft" and body["url"].endswith(f"/api/v1/campaigns/{campaign.pk}")


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"channel": "fax"}, "channel", "unknown channel"),
        ({"name": None}, "name", "required"),
        ({"template": "nope"}, "template", "unknown template"),
        ({"context": {"headline": "only"}}, "context", "missing variable"),
        ({"audience": {"tag": "has space"}}, "audience.tag", "letters, digits"),
        ({"audience": {"country": "de"}}, "audience.country", "unknown field"),
        ({"budget": 5}, "budget", "unknown field"),
        ({"context": []}, "context", "must be an object"),
    ],
)
def test_bad_input_names_the_field_and_creates_nothing(api, marketer, change, field, reason):
    body = {**BODY, **change}
    body = {k: v for k, v in body.items() if v is not None}
    response = api.post("/api/v1/campaigns", body)
    assert response.status_code == 400
    assert reason in response.json()["errors"][field]
    assert not Campaign.objects.exists()


def test_start_answers_at_once_and_queues_the_fan_out(api, marketer):
    Recipient.objects.bulk_create(
        [Recipient(email=f"r{i}@example.com", email_marketing_consent=True) for i in range(3)]
    )
    campaign_id = api.post("/api/v1/campaigns", BODY).json()["id"]

    response = api.post(f"/api/v1/campaigns/{campaign_id}/start", {})

    assert response.status_code == 202
    assert response.json()["status"] == "running"
    assert CampaignSegment.objects.filter(campaign_id=campaign_id).count() == 1
    again = api.post(f"/api/v1/campaigns/{campaign_id}/start", {})
    assert again.status_code == 409 and "only a draft campaign can be started" in again.json()["error"]


def test_pause_resume_and_cancel_follow_the_campaign_states(api, marketer):
    Recipient.objects.create(email="r@example.com", email_marketing_consent=True)
    campaign_id = api.post("/api/v1/campaigns", BODY).json()["id"]
    assert api.post(f"/api/v1/campaigns/{campaign_id}/pause", {}).status_code == 409  # a draft cannot pause
    api.post(f"/api/v1/campaigns/{campaign_id}/start", {})
    assert api.post(f"/api/v1/campaigns/{campaign_id}/pause", {}).json()["status"] == "paused"
    assert api.post(f"/api/v1/campaigns/{campaign_id}/pause", {}).status_code == 409
    assert api.post(f"/api/v1/campaigns/{campaign_id}/resume", {}).json()["status"] == "running"
    assert api.post(f"/api/v1/campaigns/{campaign_id}/cancel", {}).json()["status"] == "cancelled"
    assert api.post(f"/api/v1/campaigns/{campaign_id}/resume", {}).status_code == 409
    assert api.post(f"/api/v1/campaigns/{campaign_id}/explode", {}).status_code == 404
    assert api.post("/api/v1/campaigns/999999/start", {}).status_code == 404


def test_progress_reports_counts_rate_and_time_to_finish(api, marketer):
    campaign_id = api.post("/api/v1/campaigns", BODY).json()["id"]
    Campaign.objects.filter(pk=campaign_id).update(
        status="running", materialized_count=1000, sent_count=400, dead_count=10, skipped_count=90
    )

    body = api.get(f"/api/v1/campaigns/{campaign_id}").json()

    assert (body["sent"], body["failed"], body["skipped"], body["remaining"]) == (400, 10, 90, 500)
    assert body["percent_done"] == 50.0
    assert {"rate_per_second", "eta_seconds", "fanout_complete"} <= set(body)

"""The provider's bounce webhook (django-anymail, Postmark format): a hard bounce suppresses the address."""

import base64
import json

import pytest
from django.conf import settings

from notifications.models import Suppression

pytestmark = pytest.mark.django_db
URL = "/anymail/postmark/tracking/"


def post(client, event: dict, secret: str | None = None):
    secret = secret or settings.ANYMAIL["WEBHOOK_SECRET"]
    auth = "Basic " + base64.b64encode(secret.encode()).decode()
    return client.post(URL, data=json.dumps(event), content_type="application/json", HTTP_AUTHORIZATION=auth)


def bounce(kind: str, email: str = "gone@example.com") -> dict:
    return {
        "RecordType": "Bounce", "Type": kind, "Email": email, "BouncedAt": "2026-11-26T10:00:00Z",
        "Description": "The server was unable to deliver your message", "MessageID": "abc", "ID": 1,
    }  # fmt: skip


def test_a_hard_bounce_suppresses_the_address(client):
    assert post(client, bounce("HardBounce", "Gone@Example.com")).status_code == 200
    suppression = Suppression.objects.get()
    assert (suppression.channel, suppression.address) == ("email", "gone@example.com")
    assert "HardBounce" in suppression.reason


def test_a_soft_bounce_does_not(client):
    assert post(client, bounce("SoftBounce")).status_code == 200
    assert not Suppression.objects.exists()


def test_the_webhook_refuses_a_caller_without_the_secret(client):
    assert post(client, bounce("HardBounce"), secret="intruder:guess").status_code == 400
    assert not Suppression.objects.exists()

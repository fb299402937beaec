"""The Twilio provider against the sandbox's Twilio Messages API."""

import pytest
from django.conf import settings

from harness.sandbox.process import free_port
from notifications.providers.twilio import Provider
from tests.notifications.providers.contract import ProviderContract


def make(*, url: str | None = None, token: str = "sandbox-token") -> Provider:
    return Provider(
        name="twilio",
        timeout=5,
        api_url=url or f"{settings.SANDBOX_HTTP_URL}/twilio/",
        account_sid="ACsandbox",
        auth_token=token,
        from_number="+15005550006",
    )


class TestTwilio(ProviderContract):
    channel = "sms"
    valid_to = "+14155550100"
    invalid_to = "+15005550001"

    @pytest.fixture
    def provider(self, sandbox):
        return make()

    @pytest.fixture
    def bad_credentials_provider(self, sandbox):
        return make(token="invalid")

    @pytest.fixture
    def unreachable_provider(self):
        return make(url=f"http://127.0.0.1:{free_port()}/twilio/")

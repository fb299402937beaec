"""The Vonage SMS provider (the SMS fallback) against the sandbox's Vonage API."""

import pytest
from django.conf import settings

from harness.sandbox.process import free_port
from notifications.providers.vonage import Provider
from tests.notifications.providers.contract import ProviderContract


def make(*, url: str | None = None, secret: str = "sandbox-secret") -> Provider:
    return Provider(
        name="vonage",
        timeout=5,
        api_url=url or f"{settings.SANDBOX_HTTP_URL}/vonage/",
        api_key="sandbox-key",
        api_secret=secret,
        from_number="+15005550006",
    )


class TestVonage(ProviderContract):
    channel = "sms"
    valid_to = "+14155550100"
    invalid_to = "+15005550001"

    @pytest.fixture
    def provider(self, sandbox):
        return make()

    @pytest.fixture
    def bad_credentials_provider(self, sandbox):
        return make(secret="invalid")

    @pytest.fixture
    def unreachable_provider(self):
        return make(url=f"http://127.0.0.1:{free_port()}/vonage/")

"""The FCM HTTP v1 provider against the sandbox's FCM API."""

import pytest
from django.conf import settings

from harness.sandbox.process import free_port
from notifications.providers.fcm import Provider
from tests.notifications.providers.contract import ProviderContract


def make(*, url: str | None = None, token: str = "sandbox-token") -> Provider:
    return Provider(
        name="fcm",
        timeout=5,
        api_url=url or f"{settings.SANDBOX_HTTP_URL}/fcm/",
        project_id="notify-sandbox",
        access_token=token,
    )


class TestFcm(ProviderContract):
    channel = "push"
    valid_to = "device-token-0123456789"
    invalid_to = "invalid-token-0123456789"

    @pytest.fixture
    def provider(self, sandbox):
        return make()

    @pytest.fixture
    def bad_credentials_provider(self, sandbox):
        return make(token="invalid")

    @pytest.fixture
    def unreachable_provider(self):
        return make(url=f"http://127.0.0.1:{free_port()}/fcm/")

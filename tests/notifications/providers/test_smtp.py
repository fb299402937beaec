"""The SMTP provider (Django's SMTP backend) against the sandbox's SMTP server."""

import pytest
from django.conf import settings

from harness.sandbox.process import free_port
from notifications.providers.smtp import Provider
from tests.notifications.providers.contract import ProviderContract


def make(*, port: int | None = None, username: str = "", password: str = "") -> Provider:
    return Provider(
        name="smtp",
        timeout=5,
        host=settings.SANDBOX_SMTP_HOST,
        port=port or settings.SANDBOX_SMTP_PORT,
        username=username,
        password=password,
    )


class TestSmtp(ProviderContract):
    channel = "email"
    valid_to = "ada@example.com"
    invalid_to = "nobody@invalid.example"
    reports_retry_after = False

    @pytest.fixture
    def provider(self, sandbox):
        provider = make()
        yield provider
        provider.close()

    @pytest.fixture
    def bad_credentials_provider(self, sandbox):
        return make(username="notify", password="invalid")

    @pytest.fixture
    def unreachable_provider(self):
        return make(port=free_port())


def test_connection_is_reused_across_sends(ledger):
    provider = make()
    contract = TestSmtp()
    provider.send(contract.message())
    connection = provider.backend.connection
    provider.send(contract.message())
    assert provider.backend.connection is connection
    assert len(ledger.entries(provider="smtp")) == 2
    provider.close()

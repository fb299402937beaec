"""The Postmark provider (django-anymail) against the sandbox's Postmark API."""

import pytest
from django.conf import settings

from notifications.providers.postmark import Provider
from notifications.sandbox.process import free_port
from tests.notifications.providers.contract import ProviderContract


def make(name: str = "postmark", *, url: str | None = None, token: str = "sandbox-token") -> Provider:
    return Provider(name=name, timeout=5, api_url=url or f"{settings.SANDBOX_HTTP_URL}/{name}/", server_token=token)


class TestPostmark(ProviderContract):
    channel = "email"
    valid_to = "ada@example.com"
    invalid_to = "nobody@invalid.example"

    @pytest.fixture
    def provider(self, sandbox):
        return make()

    @pytest.fixture
    def bad_credentials_provider(self, sandbox):
        return make(token="invalid")

    @pytest.fixture
    def unreachable_provider(self):
        return make(url=f"http://127.0.0.1:{free_port()}/postmark/")


def test_message_carries_subject_html_and_idempotency_metadata(ledger):
    contract = TestPostmark()
    message = contract.message()
    make().send(message)
    (entry,) = ledger.entries(idempotency_key=message.idempotency_key)
    assert entry["subject"] == "Hello"
    assert entry["vendor"] == "postmark"

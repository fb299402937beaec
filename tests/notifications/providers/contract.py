"""The contract every provider honours, run against the real sandbox; each provider's test module subclasses it."""

import uuid

import pytest

from jobs.errors import ConfigurationError, PermanentError, TransientError
from notifications.providers.base import BaseProvider, OutboundMessage, SendResult
from notifications.rendering import RenderedMessage


class ProviderContract:
    """Subclasses define the fixtures `provider`, `bad_credentials_provider` and `unreachable_provider`,
    and the class attributes below."""

    channel: str
    valid_to: str
    invalid_to: str
    #: Whether the vendor honours Retry-After (HTTP 429); SMTP has no such header.
    reports_retry_after: bool = True

    def message(self, to: str | None = None, key: str | None = None) -> OutboundMessage:
        content = {
            "email": RenderedMessage(subject="Hello", text="Your code is 123456", html="<p>123456</p>"),
            "sms": RenderedMessage(text="Your code is 123456"),
            "push": RenderedMessage(title="Hello", text="Your code is 123456"),
        }[self.channel]
        return OutboundMessage(
            notification_id=str(uuid.uuid4()),
            idempotency_key=key or f"test-{uuid.uuid4()}",
            channel=self.channel,
            to=to or self.valid_to,
            content=content,
        )

    def test_send_is_recorded_once_with_its_idempotency_key(self, provider: BaseProvider, ledger):
        message = self.message()
        result = provider.send(message)
        assert isinstance(result, SendResult) and result.message_id
        entries = ledger.entries(idempotency_key=message.idempotency_key)
        assert len(entries) == 1
        assert entries[0]["provider"] == provider.name
        assert entries[0]["to"] == message.to

    def test_resend_with_the_same_key_is_accepted_once(self, provider: BaseProvider, ledger):
        message = self.message()
        provider.send(message)
        provider.send(message)
        assert len(ledger.entries(idempotency_key=message.idempotency_key)) == 1

    def test_invalid_recipient_is_permanent(self, provider: BaseProvider, ledger):
        with pytest.raises(PermanentError):
            provider.send(self.message(to=self.invalid_to))
        assert ledger.entries(provider=provider.name) == []

    def test_refused_credentials_are_a_configuration_error(self, bad_credentials_provider: BaseProvider, ledger):
        with pytest.raises(ConfigurationError):
            bad_credentials_provider.send(self.message())

    def test_outage_is_transient(self, provider: BaseProvider, ledger):
        ledger.set_fault(provider.name, outage=True)
        with pytest.raises(TransientError):
            provider.send(self.message())
        assert ledger.entries(provider=provider.name) == []

    def test_server_errors_are_transient(self, provider: BaseProvider, ledger):
        ledger.set_fault(provider.name, error_rate=1.0, status=500)
        with pytest.raises(TransientError):
            provider.send(self.message())

    def test_rate_limit_is_transient_with_retry_after(self, provider: BaseProvider, ledger):
        ledger.set_fault(provider.name, retry_after=7)
        with pytest.raises(TransientError) as caught:
            provider.send(self.message())
        if self.reports_retry_after:
            assert caught.value.retry_after == pytest.approx(7, abs=1)

    def test_unreachable_vendor_is_transient_and_nothing_was_sent(self, unreachable_provider: BaseProvider):
        with pytest.raises(TransientError) as caught:
            unreachable_provider.send(self.message())
        assert caught.value.unknown_outcome is False

    def test_timeout_after_sending_is_transient_with_unknown_outcome(self, provider: BaseProvider, ledger):
        provider.timeout = 0.3
        ledger.set_fault(provider.name, latency_ms=1500)
        with pytest.raises(TransientError) as caught:
            provider.send(self.message())
        assert caught.value.unknown_outcome is True

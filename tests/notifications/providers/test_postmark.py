"""The Postmark provider (django-anymail) against the sandbox's Postmark API."""

import pytest
from django.conf import settings

from harness.sandbox.process import free_port
from jobs.errors import PermanentError, TransientError
from notifications.providers.base import SendResult
from notifications.providers.postmark import Provider
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


def _comparable(entry: dict) -> dict:
    headers = {k: v for k, v in entry["headers"].items() if k not in ("Message-ID", "X-Idempotency-Key")}
    return {"subject": entry["subject"], "body": entry["body"], "headers": headers}


def test_a_batch_goes_out_in_one_call_exactly_like_single_sends(ledger):
    from dataclasses import replace

    contract = TestPostmark()
    single = replace(contract.message(to="solo@example.com"), headers={"List-Unsubscribe": "<https://x/u/1>"})
    make().send(single)
    batch = [
        replace(contract.message(to=f"batch{i}@example.com"), headers={"List-Unsubscribe": "<https://x/u/1>"})
        for i in range(3)
    ]

    results = make().send_batch(batch)

    assert all(isinstance(r, SendResult) and r.message_id for r in results)
    entries = {e["to"]: e for e in ledger.entries()}
    assert [entries[m.to]["batch"] for m in batch] == [True, True, True]
    # The shortcut for shared content must not change what the provider receives.
    assert all(_comparable(entries[m.to]) == _comparable(entries["solo@example.com"]) for m in batch)
    assert [entries[m.to]["idempotency_key"] for m in batch] == [m.idempotency_key for m in batch]
    assert [entries[m.to]["message_id"] for m in batch] == [r.message_id for r in results]


def test_a_batch_reports_each_message_on_its_own(ledger):
    contract = TestPostmark()
    batch = [contract.message(to="good@example.com"), contract.message(to="gone@invalid.example")]

    good, bad = make().send_batch(batch)

    assert isinstance(good, SendResult)
    assert isinstance(bad, PermanentError) and bad.recipient_refused
    assert [e["to"] for e in ledger.entries()] == ["good@example.com"]


def test_a_failed_batch_call_fails_every_message_transiently(ledger):
    ledger.set_fault("postmark", outage=True)
    results = make().send_batch([TestPostmark().message(), TestPostmark().message()])
    assert all(isinstance(r, TransientError) and r.status == 503 for r in results)
    assert ledger.entries() == []

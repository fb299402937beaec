"""A provider that answers like a vendor gone wrong, for the policy's tests: it says "OK" without a message id."""

from notifications.providers.base import BaseProvider, OutboundMessage, SendResult


class Provider(BaseProvider):
    channel = "push"
    vendor = "silent"

    def send(self, message: OutboundMessage) -> SendResult:
        return SendResult(message_id="")

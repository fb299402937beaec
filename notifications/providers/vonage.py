"""SMS through Vonage's SMS API (`/sms/json`); the idempotency key travels as `client-ref`."""

from typing import Any

import requests

from jobs.errors import ConfigurationError, PermanentError, TransientError
from jobs.http import parse_retry_after
from notifications.providers.base import HttpProvider, OutboundMessage, SendResult

#: Vonage answers HTTP 200 with a per-message status; these mean the number or text is at fault.
PERMANENT_STATUSES = {"3", "6", "7", "9", "15", "29"}
CONFIGURATION_STATUSES = {"2", "4", "8", "14"}
THROTTLED = "1"


class Provider(HttpProvider):
    channel = "sms"
    vendor = "vonage"

    def __init__(self, *, api_key: str, api_secret: str, from_number: str, **options: Any) -> None:
        super().__init__(**options)
        self.api_key = api_key
        self.api_secret = api_secret
        self.from_number = from_number.lstrip("+")

    def build_request(self, message: OutboundMessage) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": f"{self.api_url}sms/json",
            "data": {
                "api_key": self.api_key,
                "api_secret": self.api_secret,
                "from": self.from_number,
                "to": message.to.lstrip("+"),
                "text": message.content.text,
                "client-ref": message.idempotency_key,
            },
        }

    def parse_response(self, body: Any, message: OutboundMessage, response: requests.Response) -> SendResult:
        try:
            result = body["messages"][0]
            status = str(result["status"])
        except (KeyError, IndexError, TypeError) as exc:
            raise TransientError(f"{self.name}: unexpected answer", response_text=str(body)) from exc
        if status == "0":
            return SendResult(message_id=result.get("message-id", ""))
        text = result.get("error-text", "")
        if status == THROTTLED:
            raise TransientError(
                f"{self.name}: throttled: {text}",
                status=429,
                retry_after=parse_retry_after(response.headers.get("Retry-After")) or 1.0,
            )
        if status in CONFIGURATION_STATUSES:
            raise ConfigurationError(f"{self.name}: Vonage status {status}: {text}; check the API key and secret")
        if status in PERMANENT_STATUSES:
            raise PermanentError(f"{self.name}: Vonage status {status}: {text}", response_text=str(body))
        raise TransientError(f"{self.name}: Vonage status {status}: {text}", response_text=str(body))

    def classify_error(self, response: requests.Response) -> Exception:
        if response.status_code == 429:
            return TransientError(
                f"{self.name}: rate limited",
                status=429,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        return super().classify_error(response)

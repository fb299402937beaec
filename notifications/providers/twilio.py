"""SMS through Twilio's Messages REST API (2010-04-01), with Twilio's idempotency token header."""

from typing import Any

import requests

from jobs.errors import ConfigurationError, PermanentError, TransientError
from notifications.providers.base import HttpProvider, OutboundMessage, SendResult, parse_retry_after

#: Twilio error codes that mean the recipient can never receive this message.
PERMANENT_CODES = {21211, 21408, 21610, 21614, 30003, 30005, 30006}


class Provider(HttpProvider):
    channel = "sms"
    vendor = "twilio"

    def __init__(self, *, account_sid: str, auth_token: str, from_number: str, **options: Any) -> None:
        super().__init__(**options)
        self.account_sid = account_sid
        self.from_number = from_number
        self.session.auth = (account_sid, auth_token)

    def build_request(self, message: OutboundMessage) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": f"{self.api_url}2010-04-01/Accounts/{self.account_sid}/Messages.json",
            "headers": {"I-Twilio-Idempotency-Token": message.idempotency_key},
            "data": {"To": message.to, "From": self.from_number, "Body": message.content.text},
        }

    def parse_response(self, body: Any, message: OutboundMessage, response: requests.Response) -> SendResult:
        if not isinstance(body, dict) or not body.get("sid"):
            raise TransientError(f"{self.name}: answer without a message sid", response_text=str(body))
        return SendResult(message_id=body["sid"])

    def classify_error(self, response: requests.Response) -> Exception:
        try:
            body = response.json()
        except ValueError:
            body = {}
        code = body.get("code") if isinstance(body, dict) else None
        text = response.text
        if response.status_code == 401 or code == 20003:
            return ConfigurationError(f"{self.name}: Twilio refused the account SID or auth token")
        if response.status_code == 429 or code == 20429:
            return TransientError(
                f"{self.name}: rate limited",
                status=response.status_code,
                response_text=text,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if code in PERMANENT_CODES:
            return PermanentError(
                f"{self.name}: Twilio error {code}: {body.get('message', '')}",
                status=response.status_code,
                response_text=text,
            )
        return super().classify_error(response)

"""SMS through Twilio's Messages REST API (2010-04-01), with Twilio's idempotency token header."""

from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from jobs.errors import ConfigurationError, PermanentError, TransientError
from jobs.http import classify_request_exception, parse_retry_after
from notifications.providers.base import HttpProvider, OutboundMessage, SendResult

#: Twilio error codes that mean the recipient can never receive this message.
PERMANENT_CODES = {21211, 21408, 21610, 21614, 30003, 30005, 30006}


class Provider(HttpProvider):
    channel = "sms"
    vendor = "twilio"
    #: Twilio lists an account's messages by recipient and day: the same body to the same number,
    #: sent since the notification was written, is the message an earlier attempt got through.
    can_look_up = True
    #: Messages of one recipient read per lookup (Twilio's page size).
    LOOKUP_PAGE_SIZE = 50

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

    def look_up(self, message: OutboundMessage, *, since: datetime) -> SendResult | None:
        try:
            response = self.session.get(
                f"{self.api_url}2010-04-01/Accounts/{self.account_sid}/Messages.json",
                params={"To": message.to, "DateSent>": since.date().isoformat(), "PageSize": self.LOOKUP_PAGE_SIZE},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise classify_request_exception(exc, what=f"{self.name} lookup") from exc
        if response.status_code != 200:
            raise self.classify_error(response)
        try:
            listed = response.json().get("messages") or []
        except (ValueError, AttributeError):
            raise TransientError(f"{self.name} lookup: answer is not JSON", response_text=response.text) from None
        for entry in listed:
            if not isinstance(entry, dict) or entry.get("body") != message.content.text:
                continue
            try:
                created = parsedate_to_datetime(entry.get("date_created") or "")
            except (TypeError, ValueError):
                continue
            # Twilio's dates have whole seconds; the notification was written within this second or before.
            if created >= since.replace(microsecond=0) and entry.get("sid"):
                return SendResult(message_id=entry["sid"])
        return None

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

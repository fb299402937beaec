"""Push through Firebase Cloud Messaging's HTTP v1 `messages:send` endpoint."""

from typing import Any

import requests

from jobs.errors import ConfigurationError, PermanentError
from notifications.providers.base import HttpProvider, OutboundMessage, SendResult

#: FCM error codes that mean the token will never work again.
PERMANENT_ERRORS = {"UNREGISTERED", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH"}


class Provider(HttpProvider):
    channel = "push"
    vendor = "fcm"

    def __init__(self, *, project_id: str, access_token: str, **options: Any) -> None:
        super().__init__(**options)
        self.project_id = project_id
        # A static OAuth access token; in production mint it from a service account
        # (google-auth) and set FCM_ACCESS_TOKEN, or subclass to refresh it.
        self.session.headers["Authorization"] = f"Bearer {access_token}"

    def build_request(self, message: OutboundMessage) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": f"{self.api_url}v1/projects/{self.project_id}/messages:send",
            "json": {
                "message": {
                    "token": message.to,
                    "notification": {"title": message.content.title, "body": message.content.text},
                    "data": {"idempotency_key": message.idempotency_key, "notification_id": message.notification_id},
                }
            },
        }

    def parse_response(self, body: Any, message: OutboundMessage, response: requests.Response) -> SendResult:
        name = body.get("name", "") if isinstance(body, dict) else ""
        return SendResult(message_id=name.rsplit("/", 1)[-1] or name)

    def classify_error(self, response: requests.Response) -> Exception:
        try:
            error = response.json().get("error", {})
        except (ValueError, AttributeError):
            error = {}
        codes = {d.get("errorCode") for d in error.get("details", []) if isinstance(d, dict)}
        codes.add(error.get("status"))
        if response.status_code == 401 or "UNAUTHENTICATED" in codes or "THIRD_PARTY_AUTH_ERROR" in codes:
            return ConfigurationError(f"{self.name}: FCM refused the access token")
        if response.status_code in (400, 404) and codes & (PERMANENT_ERRORS | {"NOT_FOUND"}):
            return PermanentError(
                f"{self.name}: {', '.join(sorted(c for c in codes if c))}: {error.get('message', '')}",
                status=response.status_code,
                response_text=response.text,
            )
        return super().classify_error(response)

"""E-mail through Postmark's HTTP API, sent by django-anymail's Postmark backend."""

from typing import Any

from anymail.backends.postmark import EmailBackend
from anymail.exceptions import (
    AnymailAPIError,
    AnymailError,
    AnymailInvalidAddress,
    AnymailRecipientsRefused,
    AnymailRequestsAPIError,
)

from jobs.errors import ConfigurationError, PermanentError, TransientError
from notifications.providers._email import build_email
from notifications.providers.base import (
    BaseProvider,
    OutboundMessage,
    SendResult,
    classify_http_status,
    classify_request_exception,
)


class Provider(BaseProvider):
    channel = "email"
    vendor = "postmark"

    def __init__(self, *, api_url: str, server_token: str, from_email: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.from_email = from_email
        self.backend = EmailBackend(
            api_url=api_url, server_token=server_token, timeout=self.timeout, fail_silently=False
        )
        # Keep the session open across sends: one TLS handshake per worker process.
        self.backend.open()

    def send(self, message: OutboundMessage) -> SendResult:
        self.backend.timeout = self.timeout
        email = build_email(message, connection=self.backend, from_email=self.from_email)
        # Postmark has no idempotency header; the key travels as metadata (the sandbox honours it).
        email.metadata = {"idempotency_key": message.idempotency_key, "notification_id": message.notification_id}
        try:
            email.send()
        except AnymailRecipientsRefused as exc:
            raise PermanentError(f"{self.name}: recipient refused: {exc}") from exc
        except AnymailInvalidAddress as exc:
            raise PermanentError(f"{self.name}: invalid address: {exc}") from exc
        except AnymailRequestsAPIError as exc:
            raise self._classify(exc) from exc
        except AnymailAPIError as exc:
            raise TransientError(f"{self.name}: {exc}") from exc
        except AnymailError as exc:
            raise PermanentError(f"{self.name}: {exc}") from exc
        status = email.anymail_status
        message_id = status.message_id if isinstance(status.message_id, str) else ""
        if not message_id:
            recipient = status.recipients.get(message.to)
            message_id = recipient.message_id if recipient else ""
        return SendResult(message_id=message_id or "")

    def _classify(self, exc: AnymailRequestsAPIError) -> Exception:
        response = exc.response
        if response is None:
            cause = exc.__cause__ or exc
            return (
                classify_request_exception(cause, what=self.name)
                if hasattr(cause, "request")
                else TransientError(f"{self.name}: {exc}")
            )
        if response.status_code == 422:
            try:
                code = response.json().get("ErrorCode")
            except (ValueError, AttributeError):
                code = None
            # 10: bad server token; 400-ish codes are sender-signature problems.
            if code in (10, 400, 401):
                return ConfigurationError(f"{self.name}: Postmark refused the server token or sender (code {code})")
            return PermanentError(f"{self.name}: Postmark error {code}", status=422, response_text=response.text)
        return classify_http_status(
            response.status_code,
            text=response.text,
            retry_after=response.headers.get("Retry-After"),
            what=self.name,
        )

    def close(self) -> None:
        self.backend.close()

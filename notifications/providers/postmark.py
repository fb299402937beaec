"""E-mail through Postmark's HTTP API: single sends by django-anymail's Postmark backend, batches
(up to 500 messages per call) through Postmark's batch endpoint with anymail's payloads."""

import json
from typing import Any

import requests
from anymail.backends.postmark import EmailBackend
from anymail.exceptions import (
    AnymailAPIError,
    AnymailError,
    AnymailInvalidAddress,
    AnymailRecipientsRefused,
    AnymailRequestsAPIError,
)

from jobs.errors import ConfigurationError, JobError, PermanentError, TransientError
from jobs.http import classify_http_status, classify_request_exception, environment_once
from notifications.providers._email import build_email, email_headers
from notifications.providers.base import BaseProvider, OutboundMessage, SendResult

#: Postmark's per-message error codes that say the address itself is bad: 300 invalid
#: address, 406 inactive recipient (it hard-bounced or complained before).
RECIPIENT_ERROR_CODES = {300, 406}


class Provider(BaseProvider):
    channel = "email"
    vendor = "postmark"
    max_batch = 500
    #: Postmark's outbound message search filters on metadata: the idempotency key finds a message.
    can_look_up = True

    def __init__(self, *, api_url: str, server_token: str, from_email: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.from_email = from_email
        self.server_token = server_token
        self.backend = EmailBackend(
            api_url=api_url, server_token=server_token, timeout=self.timeout, fail_silently=False
        )
        # Keep the session open across sends: one TLS handshake per worker process.
        self.backend.open()
        environment_once(self.backend.session)

    @staticmethod
    def _metadata(message: OutboundMessage) -> dict[str, str]:
        # Postmark has no idempotency header; the key travels as metadata (the sandbox honours it).
        return {"idempotency_key": message.idempotency_key, "notification_id": message.notification_id}

    def send(self, message: OutboundMessage) -> SendResult:
        self.backend.timeout = self.timeout
        email = build_email(message, connection=self.backend, from_email=self.from_email)
        email.metadata = self._metadata(message)
        try:
            email.send()
        except AnymailRecipientsRefused as exc:
            raise PermanentError(f"{self.name}: recipient refused: {exc}", recipient_refused=True) from exc
        except AnymailInvalidAddress as exc:
            raise PermanentError(f"{self.name}: invalid address: {exc}", recipient_refused=True) from exc
        except AnymailRequestsAPIError as exc:
            raise self._classify(exc) from exc
        except AnymailAPIError as exc:
            raise TransientError(f"{self.name}: {exc}") from exc
        except AnymailError as exc:
            raise PermanentError(f"{self.name}: {exc}") from exc
        # Postmark's own answer, not anymail's reading of it: anymail can split an address it
        # cannot parse (`"a,b"@example.com`) and report neither half as refused.
        response = email.anymail_status.esp_response
        try:
            answer = response.json()
        except (AttributeError, ValueError):
            answer = None
        result = self._answer_result(answer)
        if isinstance(result, Exception):
            raise result
        return result

    def send_batch(self, messages: list[OutboundMessage]) -> list[SendResult | JobError]:
        """One call to /email/batch; Postmark answers one result per message, in order."""
        if len(messages) > self.max_batch:
            raise ValueError(f"{self.name}: a batch holds at most {self.max_batch} messages, not {len(messages)}")
        bodies: list[dict[str, Any]] = []
        template = None
        for message in messages:
            if template is not None and message.content == template[0].content:
                # Same content as the first (a campaign): anymail's payload differs only in
                # these fields, and building it costs more than the rest of a send.
                bodies.append(
                    {
                        **template[1].data,
                        "To": message.to,
                        "Headers": [{"Name": k, "Value": v} for k, v in email_headers(message).items()],
                        "Metadata": self._metadata(message),
                    }
                )
                continue
            email = build_email(message, connection=self.backend, from_email=self.from_email)
            email.metadata = self._metadata(message)
            payload = self.backend.build_message_payload(email, self.backend.send_defaults)
            template = template or (message, payload)
            bodies.append(payload.data)
        request = template[1].get_request_params(self.backend.api_url)
        try:
            response = self.backend.session.post(
                self.backend.api_url + "email/batch",
                data=json.dumps(bodies),
                headers=request["headers"],
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            error = classify_request_exception(exc, what=self.name)
            return [error] * len(messages)
        if response.status_code != 200:
            error = self._classify(AnymailRequestsAPIError(response=response))
            if isinstance(error, ConfigurationError):
                raise error
            return [error] * len(messages)
        try:
            answers = response.json()
        except ValueError:
            answers = None
        if not isinstance(answers, list) or len(answers) != len(messages):
            # The call went through but the answer cannot be matched to messages: unknown outcome.
            error = TransientError(
                f"{self.name}: batch answer does not list {len(messages)} results",
                status=response.status_code,
                response_text=response.text,
                unknown_outcome=True,
            )
            return [error] * len(messages)
        return [self._answer_result(answer) for answer in answers]

    def _answer_result(self, answer: Any) -> SendResult | JobError | ConfigurationError:
        """One message's result as Postmark states it (ErrorCode 0 and a MessageID, or the error code)."""
        code = answer.get("ErrorCode") if isinstance(answer, dict) else None
        if code == 0:
            message_id = str(answer.get("MessageID") or "")
            if not message_id:
                return TransientError(f"{self.name}: accepted without a MessageID", unknown_outcome=True)
            return SendResult(message_id=message_id)
        if code is None:
            return TransientError(
                f"{self.name}: answer without an ErrorCode: {str(answer)[:200]}", unknown_outcome=True
            )
        text = str(answer.get("Message", "")) if isinstance(answer, dict) else str(answer)
        if code in RECIPIENT_ERROR_CODES:
            return PermanentError(f"{self.name}: recipient refused (code {code}): {text}", recipient_refused=True)
        if code in (10, 400, 401):
            return ConfigurationError(f"{self.name}: Postmark refused the server token or sender (code {code})")
        if code == 429:
            return TransientError(f"{self.name}: rate limited (code {code})", status=429, retry_after=1.0)
        return PermanentError(f"{self.name}: Postmark error {code}: {text}")

    def look_up(self, message: OutboundMessage, *, since) -> SendResult | None:
        """Postmark's outbound message search by the metadata every send carries (idempotency_key)."""
        try:
            response = self.backend.session.get(
                self.backend.api_url + "messages/outbound",
                params={"count": 1, "offset": 0, "metadata_idempotency_key": message.idempotency_key},
                headers={"Accept": "application/json", "X-Postmark-Server-Token": self.server_token},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise classify_request_exception(exc, what=f"{self.name} lookup") from exc
        if response.status_code != 200:
            raise classify_http_status(response.status_code, text=response.text, what=f"{self.name} lookup")
        try:
            found = response.json().get("Messages") or []
        except (ValueError, AttributeError):
            raise TransientError(f"{self.name} lookup: answer is not JSON", response_text=response.text) from None
        for entry in found:
            if isinstance(entry, dict) and entry.get("MessageID"):
                return SendResult(message_id=str(entry["MessageID"]))
        return None

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

"""The sandbox's HTTP side: Postmark, Twilio, FCM and Vonage look-alike routes, a receiver for webhooks and partner
calls (`/<name>/hooks/<path>`), and the /_sandbox control API.

The first path segment is the provider name as configured (`/postmark-eu/email`); ledger and faults are keyed by it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime, getaddresses
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from aiohttp import web

from harness.sandbox.callbacks import CallbackError, Callbacks
from harness.sandbox.state import DEFAULT_LEDGER_LIMIT, INVALID_DOMAIN, FaultError, SandboxState, iso_utc

#: Postmark refuses larger batches; so do we, so a client that would break in production breaks here.
POSTMARK_BATCH_LIMIT = 500
#: Large enough for a full Postmark batch with bodies (aiohttp's default 1 MiB is not).
MAX_BODY_BYTES = 50 * 1024 * 1024
#: Twilio's documented magic test number for "invalid To"; Vonage gets it without the plus.
INVALID_PHONE = "+15005550001"

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_VONAGE_NUMBER = re.compile(r"^[1-9]\d{1,14}$")
_ADDR_SPEC = re.compile(r'^[^@\s<>()\[\],;:"]+@[^@\s<>()\[\],;:"]+\.[^@\s<>()\[\],;:"]+$')

_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_FCM_ERROR_CODE = {400: "INVALID_ARGUMENT", 429: "QUOTA_EXCEEDED", 500: "INTERNAL", 503: "UNAVAILABLE"}
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


class Fault(NamedTuple):
    """Why a call is refused before it is looked at: status to answer, which fault, Retry-After seconds."""

    status: int
    kind: str
    retry_after: int | None = None


_RATE_CAP = Fault(429, "rate_cap", 1)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, headers=headers, content_type="application/json")


def _retry_headers(fault: Fault) -> dict[str, str] | None:
    return {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None


def _fault_text(provider: str, fault: Fault) -> str:
    return f"Sandbox fault on provider {provider!r}: {fault.kind}"


def _parse_addresses(value: str, *, recipients: bool = True) -> tuple[list[str], str | None]:
    """The addr-specs in a header-style address list, and the first one a vendor would refuse."""
    if '"' in value or "<" in value or "(" in value:
        parts = [addr for _name, addr in getaddresses([value])]
    else:
        # The common case (a bare address) skips the slow RFC 5322 parser.
        parts = [part.strip() for part in value.split(",")]
    addrs: list[str] = []
    for part in parts:
        if not part:
            continue
        if not _ADDR_SPEC.match(part) or (recipients and part.rpartition("@")[2].lower() == INVALID_DOMAIN):
            return addrs, part
        addrs.append(part)
    if not addrs and value.strip():
        return addrs, value.strip()
    return addrs, None


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _form(raw: bytes) -> dict[str, str]:
    """A form-encoded body as a dict; raises ValueError if it is not UTF-8."""
    return dict(parse_qsl(raw.decode(), keep_blank_values=True))


class SandboxHTTP:
    """The route handlers, sharing one SandboxState with the SMTP side."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.callbacks = Callbacks()
        state.on_accept = self.callbacks.schedule

    async def _held(self, request: web.Request, provider: str, recipients: Callable[[], list[str]]) -> bool:
        """Hold the call unanswered while the provider's hold_to fault names one of its `recipients` (before every
        other fault); True if the client hung up meanwhile: then nothing is accepted and nobody reads the answer."""
        target = self.state.hold_to(provider)
        if target is None or target not in recipients():
            return False
        transport = request.transport
        await self.state.hold(
            provider=provider,
            to=target,
            where=f"{request.method} {request.path}",
            peer=transport.get_extra_info("peername") if transport is not None else None,
            gone=lambda: request.transport is None,
        )
        return request.transport is None

    async def _gate(self, provider: str, count: int) -> tuple[Fault | None, float]:
        """Apply the provider's faults to a call carrying `count` messages, in a fixed order:
        latency, outage, retry_after, error_rate, rate cap (all before auth and idempotency).

        Returns the fault that refuses the call (already counted as rejected) or None,
        and the time to accept at. The caller must not await before accepting, or the
        rate cap could be overrun by calls interleaved in between.
        """
        state = self.state
        fault = None
        if provider in state.faults:
            latency = state.latency(provider)
            if latency:
                await asyncio.sleep(latency)
            if state.outage(provider):
                fault = Fault(503, "outage")
            elif retry_after := state.retry_after(provider):
                fault = Fault(429, "retry_after", retry_after)
            elif status := state.injected_error(provider):
                fault = Fault(status, "error_rate", 1 if status == 429 else None)
        now = time.time()
        if fault is None and state.rate_capped(provider, count, now):
            fault = _RATE_CAP
        if fault is not None:
            state.reject(provider, count)
        return fault, now

    # --- a receiver: an application's webhook endpoint, a partner API --------------

    async def hook(self, request: web.Request) -> web.Response:
        """Accept any POST after the receiver's faults: the ledger keeps its path, Standard Webhooks headers and
        body (`to` is the path after /hooks/, `idempotency_key` the webhook-id or Idempotency-Key).  Nothing
        is deduplicated: a receiver that answered 2xx twice for one id shows both."""
        provider = request.match_info["provider"]
        raw = await request.read()
        fault, now = await self._gate(provider, 1)
        if fault is not None:
            return _json({"error": _fault_text(provider, fault)}, fault.status, _retry_headers(fault))
        headers = {
            name.lower(): value
            for name, value in request.headers.items()
            if name.lower().startswith("webhook-") or name.lower() in ("idempotency-key", "content-type", "user-agent")
        }
        entry = self.state.accept(
            provider=provider,
            vendor="hook",
            to=request.match_info["path"],
            message_id=str(uuid.uuid4()),
            now=now,
            idempotency_key=headers.get("webhook-id") or headers.get("idempotency-key"),
            body=raw.decode("utf-8", "replace"),
            headers=headers,
        )
        return _json({"received": entry["message_id"]})

    # --- Postmark -------------------------------------------------------------

    async def postmark_email(self, request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        raw = await request.read()
        if await self._held(request, provider, lambda: _postmark_recipients(raw)):
            return _hung_up()
        state = self.state
        fault, now = await self._gate(provider, 1)
        if fault is not None:
            return _postmark_fault(provider, fault)
        if not _postmark_token_ok(request):
            state.reject(provider)
            return _postmark_unauthorized()
        try:
            message = json.loads(raw)
        except ValueError:
            message = None
        status, result = self._postmark_message(provider, message, now, batch=False)
        return _json(result, status)

    async def postmark_batch(self, request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        raw = await request.read()
        if await self._held(request, provider, lambda: _postmark_recipients(raw)):
            return _hung_up()
        state = self.state
        try:
            messages = json.loads(raw)
        except ValueError:
            messages = None
        # Faults come first even for a malformed batch; the body is parsed early only
        # because the rate cap needs the message count.
        count = len(messages) if isinstance(messages, list) else 1
        fault, now = await self._gate(provider, count)
        if fault is not None:
            return _postmark_fault(provider, fault)
        if not _postmark_token_ok(request):
            state.reject(provider, count)
            return _postmark_unauthorized()
        if not isinstance(messages, list):
            state.reject(provider)
            return _json(
                {"ErrorCode": 402, "Message": "Received invalid JSON input: expected an array of messages."}, 400
            )
        if len(messages) > POSTMARK_BATCH_LIMIT:
            state.reject(provider, count)
            return _json(
                {
                    "ErrorCode": 300,
                    "Message": f"Batch of {count} messages exceeds the limit of {POSTMARK_BATCH_LIMIT}.",
                },
                422,
            )
        results = [self._postmark_message(provider, message, now, batch=True)[1] for message in messages]
        return _json(results)

    def _postmark_message(self, provider: str, message: Any, now: float, *, batch: bool) -> tuple[int, dict]:
        """Validate, dedupe and accept one Postmark message; (HTTP status, Postmark result object)."""
        state = self.state
        if not isinstance(message, dict):
            state.reject(provider)
            return 400, {"ErrorCode": 402, "Message": "Received invalid JSON input: expected a message object."}
        sender = message.get("From")
        if not isinstance(sender, str) or not sender.strip() or _parse_addresses(sender, recipients=False)[1]:
            state.reject(provider)
            return 422, {"ErrorCode": 300, "Message": f"Invalid 'From' address: '{sender or ''}'."}
        recipients: list[str] = []
        for field in ("To", "Cc", "Bcc"):
            value = message.get(field)
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                state.reject(provider)
                return 422, {"ErrorCode": 300, "Message": f"Invalid '{field}' address: '{value}'."}
            addrs, bad = _parse_addresses(value)
            if bad is not None:
                state.reject(provider)
                return 422, {"ErrorCode": 300, "Message": f"Invalid '{field}' address: '{bad}'."}
            recipients.extend(addrs)
        if not recipients:
            state.reject(provider)
            return 422, {"ErrorCode": 300, "Message": "Zero recipients specified"}
        metadata = message.get("Metadata") or {}
        header_list = message.get("Headers") or []
        if not isinstance(metadata, dict):
            state.reject(provider)
            return 422, {"ErrorCode": 300, "Message": "Invalid metadata content: expected an object."}
        if not isinstance(header_list, list) or not all(
            isinstance(h, dict) and isinstance(h.get("Name"), str) for h in header_list
        ):
            state.reject(provider)
            return 422, {"ErrorCode": 300, "Message": "Invalid 'Headers': expected a list of {Name, Value} objects."}
        headers = {h["Name"]: str(h.get("Value", "")) for h in header_list}
        key = metadata.get("idempotency_key")
        if key is None:
            key = next((v for n, v in headers.items() if n.lower() == "x-idempotency-key"), None)
        key = str(key) if key is not None else None
        submitted_at = iso_utc(now)
        original = state.replay(provider, key, now)
        if original is not None:
            message_id = original["message_id"]
        else:
            message_id = str(uuid.uuid4())
            state.accept(
                provider=provider,
                vendor="postmark",
                to=", ".join(recipients),
                message_id=message_id,
                now=now,
                idempotency_key=key,
                subject=message.get("Subject"),
                body=message.get("TextBody") or message.get("HtmlBody"),
                headers=headers,
                metadata={str(k): str(v) for k, v in metadata.items()},
                batch=batch,
            )
        result = {"SubmittedAt": submitted_at, "MessageID": message_id, "ErrorCode": 0, "Message": "OK"}
        if message.get("To"):
            # anymail maps per-recipient status from "To", and omits it for Cc/Bcc-only sends.
            result = {"To": message["To"], **result}
        return 200, result

    async def postmark_outbound_search(self, request: web.Request) -> web.Response:
        """Postmark's outbound message search: accepted messages by `recipient` and `metadata_<key>` filters."""
        provider = request.match_info["provider"]
        if not _postmark_token_ok(request):
            return _postmark_unauthorized()
        try:
            count, offset = int(request.query.get("count", "")), int(request.query.get("offset", "0"))
        except ValueError:
            return _json({"ErrorCode": 1, "Message": "count and offset must be whole numbers"}, 422)
        if not 1 <= count <= 500 or offset < 0:
            return _json({"ErrorCode": 1, "Message": "count must lie in 1..500 and offset be >= 0"}, 422)
        metadata = {k.removeprefix("metadata_"): v for k, v in request.query.items() if k.startswith("metadata_")}
        recipient = request.query.get("recipient")
        found = [
            entry
            for entry in self.state.ledger
            if entry["provider"] == provider
            and entry["vendor"] == "postmark"
            and all((entry.get("metadata") or {}).get(k) == v for k, v in metadata.items())
            and (recipient is None or recipient in entry["to"].split(", "))
        ]
        messages = [
            {
                "MessageID": entry["message_id"],
                "Recipients": entry["to"].split(", "),
                "ReceivedAt": entry["accepted_at"],
                "Subject": entry["subject"],
                "Status": "Sent",
                "Metadata": entry.get("metadata") or {},
            }
            for entry in reversed(found[-(offset + count) : len(found) - offset or None])
        ]
        return _json({"TotalCount": len(found), "Messages": messages})

    # --- Twilio ---------------------------------------------------------------

    async def twilio_messages(self, request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        account_sid = request.match_info["account_sid"]
        raw = await request.read()
        if await self._held(request, provider, lambda: _form_recipients(raw, "To")):
            return _hung_up()
        state = self.state
        fault, now = await self._gate(provider, 1)
        if fault is not None:
            return _json(
                {"code": 20000 + fault.status, "message": _fault_text(provider, fault), "status": fault.status},
                fault.status,
                _retry_headers(fault),
            )
        credentials = _basic_auth(request.headers.get("Authorization"))
        if credentials is None or credentials[0] != account_sid or credentials[1] in ("", "invalid"):
            state.reject(provider)
            return _json(
                {
                    "code": 20003,
                    "message": "Authenticate",
                    "more_info": "https://www.twilio.com/docs/errors/20003",
                    "status": 401,
                },
                401,
                {"WWW-Authenticate": 'Basic realm="Twilio API"'},
            )
        try:
            form = _form(raw)
        except ValueError:
            state.reject(provider)
            return _twilio_error(20400, "The request body is not UTF-8 form data.", 400)
        to, sender, body = form.get("To", ""), form.get("From") or form.get("MessagingServiceSid"), form.get("Body")
        if not to:
            state.reject(provider)
            return _twilio_error(21604, "A 'To' phone number is required.", 400)
        if not sender:
            state.reject(provider)
            return _twilio_error(21603, "A 'From' phone number is required.", 400)
        if not body and not form.get("MediaUrl"):
            state.reject(provider)
            return _twilio_error(21602, "Message body is required.", 400)
        if to == INVALID_PHONE or not _E164.match(to):
            state.reject(provider)
            return _twilio_error(21211, f"The 'To' number {to} is not a valid phone number.", 400)
        key = request.headers.get("I-Twilio-Idempotency-Token") or None
        original = state.replay(provider, key, now)
        if original is not None:
            sid, created = original["message_id"], original["accepted_ts"]
        else:
            sid, created = "SM" + uuid.uuid4().hex, now
            state.accept(
                provider=provider, vendor="twilio", to=to, message_id=sid, now=now, idempotency_key=key, body=body
            )
        date = format_datetime(datetime.fromtimestamp(created, UTC))
        return _json(
            {
                "sid": sid,
                "account_sid": account_sid,
                "status": "queued",
                "to": to,
                "from": sender,
                "body": body,
                "num_segments": "1",
                "direction": "outbound-api",
                "date_created": date,
                "date_updated": date,
                "error_code": None,
                "error_message": None,
                "uri": f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json",
            },
            201,
        )

    async def twilio_list(self, request: web.Request) -> web.Response:
        """Twilio's message list: accepted messages, newest first, by `To` and `DateSent>` (a day)."""
        provider = request.match_info["provider"]
        account_sid = request.match_info["account_sid"]
        credentials = _basic_auth(request.headers.get("Authorization"))
        if credentials is None or credentials[0] != account_sid or credentials[1] in ("", "invalid"):
            return _twilio_error(20003, "Authenticate", 401)
        to = request.query.get("To")
        since = request.query.get("DateSent>") or request.query.get("DateSent>=")
        try:
            since_ts = datetime.fromisoformat(since).replace(tzinfo=UTC).timestamp() if since else 0.0
            size = int(request.query.get("PageSize", "50"))
        except ValueError:
            return _twilio_error(20001, "DateSent must be YYYY-MM-DD and PageSize a whole number", 400)
        found = [
            entry
            for entry in reversed(self.state.ledger)
            if entry["provider"] == provider
            and entry["vendor"] == "twilio"
            and (to is None or entry["to"] == to)
            and entry["accepted_ts"] >= since_ts
        ][:size]
        return _json(
            {
                "messages": [
                    {
                        "sid": entry["message_id"],
                        "account_sid": account_sid,
                        "to": entry["to"],
                        "body": entry["body"],
                        "status": "sent",
                        "direction": "outbound-api",
                        "date_created": format_datetime(datetime.fromtimestamp(entry["accepted_ts"], UTC)),
                    }
                    for entry in found
                ],
                "page_size": size,
            }
        )

    # --- FCM ------------------------------------------------------------------

    async def fcm_send(self, request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        project_id = request.match_info["project_id"]
        raw = await request.read()
        if await self._held(request, provider, lambda: _fcm_recipients(raw)):
            return _hung_up()
        state = self.state
        fault, now = await self._gate(provider, 1)
        if fault is not None:
            return _fcm_error(fault.status, _fault_text(provider, fault), headers=_retry_headers(fault))
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or token == "invalid":
            state.reject(provider)
            return _fcm_error(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
                details=False,
            )
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        message = payload.get("message") if isinstance(payload, dict) else None
        if not isinstance(message, dict):
            state.reject(provider)
            return _fcm_error(400, 'Invalid JSON payload received: expected {"message": {...}}.')
        device = message.get("token")
        if not isinstance(device, str) or not device:
            state.reject(provider)
            return _fcm_error(400, "Request contains an invalid argument: message.token is required.")
        data = message.get("data") or {}
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            state.reject(provider)
            return _fcm_error(400, "Invalid value at 'message.data': every value must be a string (TYPE_STRING).")
        notification = message.get("notification") or {}
        if not isinstance(notification, dict):
            state.reject(provider)
            return _fcm_error(400, "Invalid value at 'message.notification': expected an object.")
        if device.startswith("invalid"):
            state.reject(provider)
            return _fcm_error(404, "Requested entity was not found.", error_code="UNREGISTERED")
        key = data.get("idempotency_key") or None
        original = state.replay(provider, key, now)
        if original is not None:
            message_id = original["message_id"]
        else:
            message_id = uuid.uuid4().hex
            state.accept(
                provider=provider,
                vendor="fcm",
                to=device,
                message_id=message_id,
                now=now,
                idempotency_key=key,
                subject=notification.get("title"),
                body=notification.get("body"),
            )
        return _json({"name": f"projects/{project_id}/messages/{message_id}"})

    # --- Vonage ---------------------------------------------------------------

    async def vonage_sms(self, request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        raw = await request.read()
        # Vonage takes digits only; a hold names the recipient as the ledger records it, in E.164.
        if await self._held(request, provider, lambda: _vonage_recipients(raw, request.content_type)):
            return _hung_up()
        state = self.state
        fault, now = await self._gate(provider, 1)
        if fault is not None:
            if fault.status == 429:
                # Vonage reports throttling in-band with HTTP 200.
                return _vonage_result({"status": "1", "error-text": "Throttled"}, _retry_headers(fault))
            return _json({"error-text": _fault_text(provider, fault)}, fault.status, _retry_headers(fault))
        try:
            params = _vonage_params(raw, request.content_type)
        except ValueError:
            state.reject(provider)
            return _json({"error-text": "Malformed request body: send form data or a JSON object."}, 400)
        api_key, api_secret = params.get("api_key", ""), params.get("api_secret", "")
        if not api_key or not api_secret or "invalid" in (api_key, api_secret):
            state.reject(provider)
            return _vonage_result({"status": "4", "error-text": "Bad Credentials"})
        for name in ("from", "to", "text"):
            if not params.get(name):
                state.reject(provider)
                return _vonage_result({"status": "2", "error-text": f"Missing {name} param"})
        to = params["to"]
        if to == INVALID_PHONE[1:] or not _VONAGE_NUMBER.match(to):
            state.reject(provider)
            return _vonage_result({"to": to, "status": "6", "error-text": "Unroutable message"})
        key = params.get("client-ref") or None
        original = state.replay(provider, key, now)
        if original is not None:
            message_id = original["message_id"]
        else:
            message_id = uuid.uuid4().hex[:16].upper()
            state.accept(
                provider=provider,
                vendor="vonage",
                # Vonage takes digits only; the ledger records E.164 like every SMS vendor.
                to=f"+{to}",
                message_id=message_id,
                now=now,
                idempotency_key=key,
                body=params["text"],
            )
        result = {
            "to": to,
            "message-id": message_id,
            "status": "0",
            "remaining-balance": "10.0",
            "message-price": "0.01",
            "network": "12345",
        }
        if key is not None:
            result["client-ref"] = key
        return _vonage_result(result)

    # --- control API ----------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def ledger(self, request: web.Request) -> web.Response:
        filters: dict[str, Any] = {}
        for name, value in request.query.items():
            if name in ("provider", "idempotency_key", "to"):
                filters[name] = value
            elif name in ("since_seq", "limit"):
                if not value.isdigit():
                    return _json({"error": f"{name}: must be a non-negative integer"}, 400)
                filters[name] = int(value)
            else:
                return _json(
                    {"error": f"{name}: unknown filter; use provider, idempotency_key, to, since_seq, limit"}, 400
                )
        filters.setdefault("limit", DEFAULT_LEDGER_LIMIT)
        return _json(self.state.query(**filters))

    async def clear_ledger(self, request: web.Request) -> web.Response:
        self.state.clear_ledger()
        return _json({"count": 0, "entries": [], "replays": 0})

    async def stats(self, request: web.Request) -> web.Response:
        return _json(self.state.stats(time.time()))

    async def get_faults(self, request: web.Request) -> web.Response:
        return _json({"faults": self.state.faults})

    async def set_fault(self, request: web.Request) -> web.Response:
        try:
            payload = json.loads(await request.read())
        except ValueError:
            return _json({"error": "body: must be a JSON object"}, 400)
        try:
            faults = self.state.set_fault(payload)
        except FaultError as exc:
            return _json({"error": str(exc)}, 400)
        return _json({"provider": payload["provider"], "faults": faults})

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.state.clear_faults(request.query.get("provider"))
        return _json({"faults": self.state.faults})

    async def get_callbacks(self, request: web.Request) -> web.Response:
        return _json(self.callbacks.summary())

    async def set_callbacks(self, request: web.Request) -> web.Response:
        try:
            payload = json.loads(await request.read())
        except ValueError:
            return _json({"error": "body: must be a JSON object"}, 400)
        try:
            self.callbacks.configure(payload)
        except CallbackError as exc:
            return _json({"error": str(exc)}, 400)
        return _json(self.callbacks.summary())

    async def clear_callbacks(self, request: web.Request) -> web.Response:
        self.callbacks.clear()
        return _json(self.callbacks.summary())

    async def held(self, request: web.Request) -> web.Response:
        unknown = sorted(set(request.query) - {"provider"})
        if unknown:
            return _json({"error": f"{unknown[0]}: unknown filter; use provider"}, 400)
        return _json({"held": self.state.held(request.query.get("provider"))})


def _hung_up() -> web.Response:
    # Nobody reads it: the client of a held call went away.  Status 499 as nginx logs such a call.
    return _json({"error": "the client closed the connection while its call was held"}, 499)


def _postmark_recipients(raw: bytes) -> list[str]:
    """Every To, Cc and Bcc address of a Postmark message or batch ([] for a body that is neither)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return []
    found: list[str] = []
    for message in data if isinstance(data, list) else [data]:
        if isinstance(message, dict):
            for field in ("To", "Cc", "Bcc"):
                if isinstance(message.get(field), str):
                    found += _parse_addresses(message[field])[0]
    return found


def _form_recipients(raw: bytes, field: str) -> list[str]:
    try:
        value = _form(raw).get(field)
    except ValueError:
        return []
    return [value] if value else []


def _fcm_recipients(raw: bytes) -> list[str]:
    try:
        payload = json.loads(raw)
    except ValueError:
        return []
    message = payload.get("message") if isinstance(payload, dict) else None
    token = message.get("token") if isinstance(message, dict) else None
    return [token] if isinstance(token, str) else []


def _vonage_params(raw: bytes, content_type: str) -> dict[str, str]:
    """A Vonage request's parameters, form data or a JSON object; raises ValueError for anything else."""
    if content_type == "application/json":
        params = json.loads(raw)
        if not isinstance(params, dict):
            raise ValueError("expected a JSON object")
        return {k: str(v) for k, v in params.items() if v is not None}
    return _form(raw)


def _vonage_recipients(raw: bytes, content_type: str) -> list[str]:
    try:
        to = _vonage_params(raw, content_type).get("to")
    except ValueError:
        return []
    return [f"+{to}"] if to else []


def _postmark_token_ok(request: web.Request) -> bool:
    token = request.headers.get("X-Postmark-Server-Token", "").strip()
    return bool(token) and token != "invalid"


def _postmark_unauthorized() -> web.Response:
    return _json(
        {"ErrorCode": 10, "Message": "Request does not contain a valid Server token (X-Postmark-Server-Token)."},
        401,
    )


def _postmark_fault(provider: str, fault: Fault) -> web.Response:
    # 300 is what anymail expects beside a 422; 100 is Postmark's "maintenance" code.
    code = {401: 10, 422: 300}.get(fault.status, 100 if fault.status >= 500 else fault.status)
    return _json({"ErrorCode": code, "Message": _fault_text(provider, fault)}, fault.status, _retry_headers(fault))


def _twilio_error(code: int, message: str, status: int) -> web.Response:
    return _json(
        {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
        status,
    )


def _fcm_error(
    status: int,
    message: str,
    *,
    error_code: str | None = None,
    details: bool = True,
    headers: dict[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": message, "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}
    error_code = error_code or _FCM_ERROR_CODE.get(status)
    if details and error_code:
        error["details"] = [{"@type": _FCM_ERROR_TYPE, "errorCode": error_code}]
    return _json({"error": error}, status, headers)


def _vonage_result(message: dict[str, str], headers: dict[str, str] | None = None) -> web.Response:
    return _json({"message-count": "1", "messages": [message]}, 200, headers)


async def _no_route(request: web.Request) -> web.Response:
    # A catch-all route rather than an error middleware: a middleware would cost every
    # vendor call a little, and only unknown paths (or wrong methods) land here.
    return _json({"error": f"no sandbox route for {request.method} {request.path}", "status": 404}, 404)


def create_app(state: SandboxState) -> web.Application:
    """The aiohttp application serving every vendor route and the /_sandbox control API."""
    routes = SandboxHTTP(state)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/_sandbox/health", routes.health)
    app.router.add_get("/_sandbox/ledger", routes.ledger)
    app.router.add_delete("/_sandbox/ledger", routes.clear_ledger)
    app.router.add_get("/_sandbox/stats", routes.stats)
    app.router.add_get("/_sandbox/faults", routes.get_faults)
    app.router.add_post("/_sandbox/faults", routes.set_fault)
    app.router.add_delete("/_sandbox/faults", routes.clear_faults)
    app.router.add_get("/_sandbox/held", routes.held)
    app.router.add_get("/_sandbox/callbacks", routes.get_callbacks)
    app.router.add_post("/_sandbox/callbacks", routes.set_callbacks)
    app.router.add_delete("/_sandbox/callbacks", routes.clear_callbacks)
    app.router.add_post("/{provider}/hooks/{path:.*}", routes.hook)
    app.router.add_post("/{provider}/email", routes.postmark_email)
    app.router.add_post("/{provider}/email/batch", routes.postmark_batch)
    app.router.add_get("/{provider}/messages/outbound", routes.postmark_outbound_search)
    app.router.add_post("/{provider}/2010-04-01/Accounts/{account_sid}/Messages.json", routes.twilio_messages)
    app.router.add_get("/{provider}/2010-04-01/Accounts/{account_sid}/Messages.json", routes.twilio_list)
    app.router.add_post("/{provider}/v1/projects/{project_id}/messages:send", routes.fcm_send)
    app.router.add_post("/{provider}/sms/json", routes.vonage_sms)
    app.router.add_route("*", "/{path:.*}", _no_route)
    app["callbacks"] = routes.callbacks
    return app

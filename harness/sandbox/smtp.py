"""The sandbox's SMTP side (provider `smtp`): an aiosmtpd handler making one ledger entry per accepted recipient.

Unlike a real SMTP server it dedupes on the X-Idempotency-Key header; production code must not rely on that.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from harness.sandbox.state import INVALID_DOMAIN, SandboxState

PROVIDER = "smtp"
#: The name the server gives in its greeting and EHLO reply.
HOSTNAME = "provider-sandbox"

#: compat32, not policy.default: the modern policy builds header objects that cost
#: ~0.7 ms a message, which was most of the server's time per SMTP message.
_parser = BytesParser(policy=compat32)


class SandboxHandler:
    """aiosmtpd handler hooks; the fault and ledger decisions live in SandboxState.

    Faults map to SMTP replies: outage and retry_after refuse MAIL FROM (421, 451), error_rate
    and the rate cap refuse DATA (451, or 550 for a 4xx status), latency delays the DATA reply,
    hold_to leaves the DATA of a message to that recipient unanswered.
    """

    def __init__(self, state: SandboxState, provider: str = PROVIDER) -> None:
        self.state = state
        self.provider = provider

    async def handle_MAIL(  # noqa: N802  (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        state = self.state
        if state.outage(self.provider):
            state.reject(self.provider)
            return "421 4.3.2 Service not available"
        retry_after = state.retry_after(self.provider)
        if retry_after:
            state.reject(self.provider)
            return f"451 4.7.1 Rate limited, retry in {retry_after} s"
        # Answering for aiosmtpd means recording the sender as it would have.
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.rpartition("@")[2].lower() == INVALID_DOMAIN:
            self.state.reject(self.provider)
            return "550 5.1.1 Mailbox unavailable"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        state, provider = self.state, self.provider
        recipients = envelope.rcpt_tos
        target = state.hold_to(provider)
        if target is not None and target in recipients:
            # aiosmtpd cancels this handler when the client hangs up: nothing after the hold runs then.
            await state.hold(provider=provider, to=target, where="DATA", peer=session.peer)
        latency = state.latency(provider)
        if latency:
            await asyncio.sleep(latency)
        status = state.injected_error(provider)
        if status:
            state.reject(provider, len(recipients))
            if status == 429:
                return "451 4.7.1 Rate limited, retry in 1 s"
            return "451 4.3.0 Temporary failure" if status >= 500 else "550 5.0.0 Rejected"
        now = time.time()
        if state.rate_capped(provider, len(recipients), now):
            state.reject(provider, len(recipients))
            return "451 4.7.1 Rate limited, retry in 1 s"
        try:
            message = _parser.parsebytes(envelope.original_content or b"")
            headers = {name: _header_text(value) for name, value in message.raw_items()}
            body = _text_of(message)
        except Exception:  # whatever the parser trips on, the client sent a malformed message
            state.reject(provider, len(recipients))
            return "554 5.6.0 Message could not be parsed"
        by_name = {name.lower(): value for name, value in headers.items()}
        key = by_name.get("x-idempotency-key", "").strip() or None
        original = state.replay(provider, key, now)
        if original is not None:
            return f"250 2.0.0 OK queued as {original['message_id']}"
        # The client's own Message-ID, when it set one, so a test can match the ledger
        # against what the sending side recorded.
        message_id = by_name.get("message-id", "").strip() or f"<{uuid.uuid4().hex}@{HOSTNAME}>"
        for recipient in recipients:
            state.accept(
                provider=provider,
                vendor="smtp",
                to=recipient,
                message_id=message_id,
                now=now,
                idempotency_key=key,
                subject=by_name.get("subject"),
                body=body,
                headers=headers,
            )
        return f"250 2.0.0 OK queued as {message_id}"


def _header_text(value: str) -> str:
    """A raw header value unfolded, as text: RFC 2047 encoded words and raw UTF-8 decoded."""
    text = value.replace("\r\n", "").replace("\n", "")
    if not text.isascii():
        # The bytes parser hands raw 8-bit header bytes (SMTPUTF8) over surrogate-escaped.
        try:
            return text.encode("ascii", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:
            return text
    if "=?" in text:
        try:
            return str(make_header(decode_header(text)))
        except (LookupError, UnicodeError, ValueError):
            return text
    return text


def _text_of(message: Message) -> str:
    """The first text/plain part, else the first text/html part, decoded; "" if there is neither."""
    html = None
    for part in message.walk():
        content_type = part.get_content_type()
        if content_type == "text/plain":
            return _decoded(part)
        if content_type == "text/html" and html is None:
            html = part
    return _decoded(html) if html is not None else ""


def _decoded(part: Message) -> str:
    payload = part.get_payload(decode=True) or b""
    try:
        return payload.decode(part.get_content_charset() or "utf-8", "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    """Any credentials pass except the password `invalid`, so tests can provoke a 535."""
    ok = isinstance(auth_data, LoginPassword) and auth_data.password != b"invalid"
    return AuthResult(success=ok, handled=False)


def create_protocol(handler: SandboxHandler, loop: asyncio.AbstractEventLoop) -> SMTP:
    """One aiosmtpd protocol instance per connection, for loop.create_server."""
    return SMTP(
        handler,
        hostname=HOSTNAME,
        ident="provider-sandbox",
        enable_SMTPUTF8=True,
        # Offer AUTH on a plain connection so clients configured with credentials
        # can log in; it is never required.
        auth_require_tls=False,
        authenticator=authenticate,
        loop=loop,
    )

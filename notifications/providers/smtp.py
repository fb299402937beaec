"""E-mail through any SMTP server, sent by Django's SMTP backend over one kept-open connection."""

import smtplib
from typing import Any

from django.core.mail.backends.smtp import EmailBackend

from jobs.errors import ConfigurationError, PermanentError, TransientError
from notifications.providers._email import build_email
from notifications.providers.base import BaseProvider, OutboundMessage, SendResult


def _by_code(code: int, text: str, what: str) -> Exception:
    if 400 <= code < 500:
        return TransientError(f"{what}: SMTP {code} {text}", status=code)
    return PermanentError(f"{what}: SMTP {code} {text}", status=code)


class Provider(BaseProvider):
    channel = "email"
    vendor = "smtp"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str = "",
        password: str = "",
        use_tls: bool = False,
        from_email: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.from_email = from_email
        self.backend = EmailBackend(
            host=host,
            port=port,
            username=username or None,
            password=password or None,
            use_tls=use_tls,
            timeout=self.timeout,
            fail_silently=False,
        )

    def send(self, message: OutboundMessage) -> SendResult:
        email = build_email(message, connection=self.backend, from_email=self.from_email)
        try:
            # Opening once and keeping the connection saves a handshake per message;
            # open() is a no-op while the connection is up.
            self.backend.timeout = self.timeout
            self.backend.open()
            sent = self.backend.send_messages([email])
        except smtplib.SMTPAuthenticationError as exc:
            self._reset()
            raise ConfigurationError(f"{self.name}: SMTP login refused ({exc.smtp_code})") from exc
        except smtplib.SMTPRecipientsRefused as exc:
            self._reset()
            code, text = next(iter(exc.recipients.values()))
            raise _by_code(
                code, text.decode(errors="replace") if isinstance(text, bytes) else str(text), self.name
            ) from exc
        except smtplib.SMTPSenderRefused as exc:
            self._reset()
            if exc.smtp_code >= 500:
                raise ConfigurationError(f"{self.name}: sender {exc.sender} refused: {exc.smtp_error!r}") from exc
            raise _by_code(exc.smtp_code, repr(exc.smtp_error), self.name) from exc
        except smtplib.SMTPResponseException as exc:
            self._reset()
            raise _by_code(exc.smtp_code, repr(exc.smtp_error), self.name) from exc
        except (smtplib.SMTPServerDisconnected, TimeoutError) as exc:
            self._reset()
            raise TransientError(f"{self.name}: {exc.__class__.__name__}: {exc}", unknown_outcome=True) from exc
        except (smtplib.SMTPException, OSError) as exc:
            self._reset()
            raise TransientError(f"{self.name}: {exc.__class__.__name__}: {exc}") from exc
        if sent != 1:
            raise TransientError(f"{self.name}: the SMTP backend reported {sent} messages sent")
        return SendResult(message_id=email.extra_headers["Message-ID"])

    def _reset(self) -> None:
        try:
            self.backend.close()
        except Exception:  # the connection is already broken; a new one is opened next time
            self.backend.connection = None

    def close(self) -> None:
        self._reset()

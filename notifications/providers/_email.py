"""The Django e-mail message both e-mail providers send, built one way."""

from django.conf import settings
from django.core.mail import EmailMultiAlternatives

from notifications.providers.base import OutboundMessage


def email_headers(message: OutboundMessage) -> dict[str, str]:
    return {
        # Our own id, so the SMTP provider can report it and support can find a message.
        "Message-ID": f"<{message.notification_id}@notify>",
        "X-Idempotency-Key": message.idempotency_key,
        **message.headers,
    }


def build_email(message: OutboundMessage, *, connection, from_email: str | None = None) -> EmailMultiAlternatives:
    headers = email_headers(message)
    email = EmailMultiAlternatives(
        subject=message.content.subject,
        body=message.content.text,
        from_email=from_email or settings.NOTIFICATIONS_FROM_EMAIL,
        to=[message.to],
        headers=headers,
        connection=connection,
    )
    if message.content.html:
        email.attach_alternative(message.content.html, "text/html")
    return email

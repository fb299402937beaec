"""One-click unsubscribe (RFC 8058): signed links in marketing e-mail that withdraw a recipient's consent."""

from django.conf import settings
from django.core import signing
from django.urls import reverse

from notifications.models import MARKETING_CONSENT_FIELDS, Recipient

SALT = "notifications.unsubscribe"


def unsubscribe_url(*, recipient_id: int, channel: str) -> str:
    """An absolute link that never expires: people unsubscribe from mail that is months old."""
    token = signing.dumps({"r": recipient_id, "c": channel}, salt=SALT, compress=True)
    return settings.PUBLIC_BASE_URL.rstrip("/") + reverse("unsubscribe", args=[token])


def unsubscribe_headers(*, recipient_id: int, channel: str) -> dict[str, str]:
    """The headers mail clients turn into an unsubscribe button that POSTs without a page."""
    return {
        "List-Unsubscribe": f"<{unsubscribe_url(recipient_id=recipient_id, channel=channel)}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def recipient_unsubscribe(*, token: str) -> tuple[Recipient, str]:
    """Withdraw the marketing consent the token names; signing.BadSignature for a forged or broken token."""
    data = signing.loads(token, salt=SALT)
    channel = data["c"]
    if channel not in MARKETING_CONSENT_FIELDS:
        raise signing.BadSignature(f"unknown channel {channel!r}")
    recipient = Recipient.objects.get(pk=data["r"])
    Recipient.objects.filter(pk=recipient.pk).update(**{MARKETING_CONSENT_FIELDS[channel]: False})
    return recipient, channel

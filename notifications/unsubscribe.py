"""Signed links in marketing e-mail to a recipient's own pages: one-click unsubscribe (RFC 8058), which withdraws
a channel's consent, and the preference centre (consent per channel, muted topics, quiet hours, time zone).

One signing for both (Django's, keyed by SECRET_KEY), a salt per page: an unsubscribe link never opens the
preference centre.  Neither expires: people act on mail that is months old.
"""

from dataclasses import replace

from django.conf import settings
from django.core import signing
from django.urls import reverse
from django.utils.html import format_html

from notifications.models import MARKETING_CONSENT_FIELDS, Channel, Recipient
from notifications.rendering import RenderedMessage

UNSUBSCRIBE_SALT = "notifications.unsubscribe"
PREFERENCES_SALT = "notifications.preferences"


def _signed_url(view_name: str, data: dict, *, salt: str) -> str:
    token = signing.dumps(data, salt=salt, compress=True)
    return settings.PUBLIC_BASE_URL.rstrip("/") + reverse(view_name, args=[token])


def _signed_data(token: str, *, salt: str) -> dict:
    """What a link carries; signing.BadSignature for a forged, broken or foreign token."""
    data = signing.loads(token, salt=salt)
    if not isinstance(data, dict) or not isinstance(data.get("r"), int):
        raise signing.BadSignature("not a recipient's link")
    return data


# --- one-click unsubscribe ---------------------------------------------------------------------------------------


def unsubscribe_url(*, recipient_id: int, channel: str) -> str:
    """An absolute link that withdraws the recipient's marketing consent for `channel` (on POST)."""
    return _signed_url("unsubscribe", {"r": recipient_id, "c": channel}, salt=UNSUBSCRIBE_SALT)


def unsubscribe_read(*, token: str) -> tuple[int, str]:
    """(recipient id, channel) of an unsubscribe link; signing.BadSignature for a forged or broken one."""
    data = _signed_data(token, salt=UNSUBSCRIBE_SALT)
    if data.get("c") not in MARKETING_CONSENT_FIELDS:
        raise signing.BadSignature(f"unknown channel {data.get('c')!r}")
    return data["r"], data["c"]


def recipient_unsubscribe(*, token: str) -> tuple[Recipient, str]:
    """Withdraw the marketing consent the token names; signing.BadSignature for a forged or broken token."""
    recipient_id, channel = unsubscribe_read(token=token)
    recipient = Recipient.objects.get(pk=recipient_id)
    Recipient.objects.filter(pk=recipient.pk).update(**{MARKETING_CONSENT_FIELDS[channel]: False})
    return recipient, channel


# --- the preference centre ---------------------------------------------------------------------------------------


def preferences_url(*, recipient_id: int) -> str:
    """An absolute link to the recipient's own preference page."""
    return _signed_url("preferences", {"r": recipient_id}, salt=PREFERENCES_SALT)


def preferences_recipient(*, token: str) -> Recipient:
    """The recipient a preference link belongs to; signing.BadSignature for a forged or broken link,
    Recipient.DoesNotExist for one whose recipient is gone."""
    return Recipient.objects.get(pk=_signed_data(token, salt=PREFERENCES_SALT)["r"])


def recipient_topics(recipient: Recipient) -> list[str]:
    """The topics the preference page offers: those the recipient is tagged with, and any they muted."""
    return sorted(set(recipient.tags) | set(recipient.muted_topics))


def recipient_preferences_update(
    *, recipient_id: int, consent: dict[str, bool], muted_topics: list[str], quiet_hours: str, timezone: str
) -> bool:
    """Store what the recipient chose on their page (validated by the caller); the next send reads it,
    including the next batch of a running campaign.  Only topics the page offered can be muted; False if
    the recipient is gone."""
    recipient = Recipient.objects.filter(pk=recipient_id).first()
    if recipient is None:
        return False
    offered = set(recipient_topics(recipient))
    fields = {MARKETING_CONSENT_FIELDS[channel]: bool(consent.get(channel)) for channel in MARKETING_CONSENT_FIELDS}
    updated = Recipient.objects.filter(pk=recipient_id).update(
        **fields,
        muted_topics=sorted(set(muted_topics) & offered),
        quiet_hours=quiet_hours,
        timezone=timezone,
    )
    return bool(updated)


# --- what a marketing e-mail carries -----------------------------------------------------------------------------


def marketing_email(content: RenderedMessage, *, recipient_id: int) -> tuple[RenderedMessage, dict[str, str]]:
    """A marketing e-mail's body with the recipient's two links at its foot (preference centre, unsubscribe)
    and the one-click unsubscribe headers: the one place a marketing e-mail gets them."""
    preferences = preferences_url(recipient_id=recipient_id)
    unsubscribe = unsubscribe_url(recipient_id=recipient_id, channel=Channel.EMAIL)
    text = f"{content.text}\n\n--\nYour e-mail preferences: {preferences}\nUnsubscribe: {unsubscribe}"
    html = content.html
    if html:
        footer = format_html(
            '<p style="font-size:small;color:#666"><a href="{}">Your e-mail preferences</a> · '
            '<a href="{}">Unsubscribe</a></p>',
            preferences,
            unsubscribe,
        )
        closing = html.lower().rfind("</body>")
        html = html[:closing] + footer + html[closing:] if closing >= 0 else html + footer
    # Mail clients turn these into an unsubscribe button that POSTs without a page.
    headers = {"List-Unsubscribe": f"<{unsubscribe}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    return replace(content, text=text, html=html), headers

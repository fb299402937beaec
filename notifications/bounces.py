"""Hard bounces and complaints reported by the e-mail provider (django-anymail's tracking webhook) suppress
the address, so neither marketing nor transactional mail is sent to it again."""

import logging

from anymail.signals import AnymailTrackingEvent, EventType, tracking
from django.dispatch import receiver

from notifications.consent import address_suppress
from notifications.models import Channel

logger = logging.getLogger(__name__)

#: Postmark bounce types that mean "this address will never accept mail"; a soft bounce
#: (full mailbox, greylisting) is not one of them.
HARD_BOUNCE_TYPES = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated"}


def should_suppress(event: AnymailTrackingEvent) -> bool:
    esp_type = (event.esp_event or {}).get("Type") if isinstance(event.esp_event, dict) else None
    if event.event_type == EventType.BOUNCED:
        return esp_type in HARD_BOUNCE_TYPES
    return event.event_type in (EventType.REJECTED, EventType.COMPLAINED)


@receiver(tracking, dispatch_uid="notifications.bounces")
def suppress_on_hard_bounce(sender, event: AnymailTrackingEvent, esp_name: str, **kwargs) -> None:
    if not event.recipient or not should_suppress(event):
        return
    esp_type = event.esp_event.get("Type", "") if isinstance(event.esp_event, dict) else ""
    reason = f"{esp_name} reported {event.event_type}" + (f" ({esp_type})" if esp_type else "")
    if event.description:
        reason += f": {event.description}"
    address_suppress(channel=Channel.EMAIL, address=event.recipient.lower(), reason=reason)

"""What recipients asked for: marketing consent per channel, muted topics, suppressed addresses, quiet hours
(the platform's or their own) in their time zone.

Checked when a message is sent, not when it is queued: a recipient who opts out, mutes a campaign's
topic, or whose address bounces, mid-campaign gets nothing more.  `marketing_hold` is the one decision
for a marketing message, on the single-send path and for campaign batches alike.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings

from notifications.models import MARKETING_CONSENT_FIELDS, Recipient, Suppression

logger = logging.getLogger(__name__)

#: A recipient's own quiet hours that turn them off for that recipient; "" follows MARKETING_QUIET_HOURS.
NO_QUIET_HOURS = "none"


@lru_cache(maxsize=8)
def parse_quiet_hours(value: str) -> tuple[int, int] | None:
    """ "21-8" -> (21, 8); "" -> None.  ValueError says what a valid value looks like."""
    value = value.strip()
    if not value:
        return None
    start, sep, end = value.partition("-")
    try:
        hours = (int(start), int(end))
    except ValueError:
        hours = None
    if not sep or hours is None or not all(0 <= h <= 23 for h in hours) or hours[0] == hours[1]:
        raise ValueError(
            f"MARKETING_QUIET_HOURS must look like '21-8' (from 21:00 to 08:00 local time) or be empty, not {value!r}"
        )
    return hours


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        logger.warning("unknown time zone %r; using UTC for quiet hours", name)
        return ZoneInfo("UTC")


def own_quiet_hours(value: str) -> str:
    """A recipient's own quiet hours as stored: "" (the platform's), "none", or "21-8".  ValueError says
    what a valid value looks like, in words meant for the recipient."""
    value = value.strip().lower()
    if value in ("", NO_QUIET_HOURS):
        return value
    try:
        start, end = parse_quiet_hours(value)
    except ValueError:
        raise ValueError(
            "Enter two whole hours from 0 to 23 like 21-8 (quiet from 21:00 to 08:00 your time), "
            f"{NO_QUIET_HOURS!r} for no quiet hours, or leave it empty for ours."
        ) from None
    return f"{start}-{end}"


def _quiet_hours(own: str) -> tuple[int, int] | None:
    """The hours that apply to a recipient: their own, else the platform's."""
    if own == NO_QUIET_HOURS:
        return None
    if own:
        try:
            return parse_quiet_hours(own)
        except ValueError:
            # Only the preference centre writes it, and it validates; a value written around it is not
            # worth failing a send for.
            logger.warning("unusable quiet hours %r of a recipient; using MARKETING_QUIET_HOURS", own)
    return parse_quiet_hours(settings.MARKETING_QUIET_HOURS)


def quiet_until(timezone_name: str, now: datetime, own_hours: str = "") -> datetime | None:
    """When quiet hours end for a recipient in `timezone_name`, or None if it is not quiet there now.
    `own_hours`: the recipient's own (Recipient.quiet_hours), which override the platform's."""
    hours = _quiet_hours(own_hours)
    if hours is None:
        return None
    start, end = hours
    local = now.astimezone(_zone(timezone_name))
    hour = local.hour
    quiet = start <= hour or hour < end if start > end else start <= hour < end
    if not quiet:
        return None
    day = local.date() if hour < end else local.date() + timedelta(days=1)
    # Built on the wall clock, so a daylight-saving change keeps "08:00 local".
    return datetime.combine(day, time(end), tzinfo=local.tzinfo)


def marketing_consent(recipient: Recipient, channel: str) -> bool:
    return getattr(recipient, MARKETING_CONSENT_FIELDS[channel])


def topic_muted(recipient: Recipient, topic: str) -> bool:
    """A campaign's topic is its audience tag; a message without one cannot be muted by topic."""
    return bool(topic) and topic in recipient.muted_topics


def withdrawn_reason(channel: str) -> str:
    return f"not sent: the recipient withdrew marketing consent for {channel}"


def muted_reason(topic: str) -> str:
    return f"not sent: the recipient muted the topic {topic}"


#: The recipient's fields marketing_hold reads, besides the channel's consent (MARKETING_CONSENT_FIELDS).
HOLD_FIELDS = ("timezone", "quiet_hours", "muted_topics")


@dataclass(frozen=True)
class Hold:
    """Why a marketing message does not go now: skipped for good (`until` None) or waiting until `until`."""

    reason: str
    until: datetime | None = None


def marketing_hold(recipient: Recipient, *, channel: str, topic: str, now: datetime) -> Hold | None:
    """What the recipient's preferences say about a marketing message on `channel` about `topic` at `now`:
    None to send it; skip it (consent withdrawn, topic muted); or wait for the end of their quiet hours.

    Only for marketing: security and transactional messages never ask.  A campaign batch's claim
    (campaign_delivery) applies the two skip rules again in the statement that takes its rows.
    """
    if not marketing_consent(recipient, channel):
        return Hold(withdrawn_reason(channel))
    if topic_muted(recipient, topic):
        return Hold(muted_reason(topic))
    until = quiet_until(recipient.timezone, now, recipient.quiet_hours)
    if until is not None:
        return Hold(f"quiet hours in {recipient.timezone}", until)
    return None


def suppression_reasons(channel: str, addresses: list[str]) -> dict[str, str]:
    """address -> why it is suppressed, for those of `addresses` that are (one query)."""
    return dict(Suppression.objects.filter(channel=channel, address__in=addresses).values_list("address", "reason"))


def address_suppress(*, channel: str, address: str, reason: str) -> bool:
    """Stop sending to an address (hard bounce, refused as invalid); True if it was not suppressed yet."""
    _, created = Suppression.objects.get_or_create(channel=channel, address=address, defaults={"reason": reason[:500]})
    if created:
        logger.warning("%s address %s suppressed: %s", channel, address, reason)
    return created

"""What recipients asked for: marketing consent per channel, suppressed addresses, quiet hours in their time zone.

Checked when a message is sent, not when it is queued: a recipient who opts out, or
whose address bounces, mid-campaign gets nothing more.
"""

import logging
from datetime import datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings

from notifications.models import MARKETING_CONSENT_FIELDS, Recipient, Suppression

logger = logging.getLogger(__name__)


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


def quiet_until(timezone_name: str, now: datetime) -> datetime | None:
    """When quiet hours end for a recipient in `timezone_name`, or None if it is not quiet there now."""
    hours = parse_quiet_hours(settings.MARKETING_QUIET_HOURS)
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


def suppression_reasons(channel: str, addresses: list[str]) -> dict[str, str]:
    """address -> why it is suppressed, for those of `addresses` that are (one query)."""
    return dict(Suppression.objects.filter(channel=channel, address__in=addresses).values_list("address", "reason"))


def address_suppress(*, channel: str, address: str, reason: str) -> bool:
    """Stop sending to an address (hard bounce, refused as invalid); True if it was not suppressed yet."""
    _, created = Suppression.objects.get_or_create(channel=channel, address=address, defaults={"reason": reason[:500]})
    if created:
        logger.warning("%s address %s suppressed: %s", channel, address, reason)
    return created

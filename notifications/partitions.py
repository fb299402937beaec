"""How the notifications and their events are cut (jobs/partitions.py), so that retention drops a leaf of them:

    weeks ....... single sends: their ids are time-ordered (jobs.ids.uuid7), so a week is a range of ids;
                  the current week and PARTITIONS_AHEAD_WEEKS ahead always exist (partitions_ensure)
    campaigns ... campaign rows: their ids begin with their campaign's (counting.campaign_key_prefix), so a run of
                  campaigns is a range of ids; made when a campaign's first segment is written, as many campaigns
                  wide as were started in the past week (a leaf a week, roughly), at least 4
    default ..... rows from before the partitioning, and rows kept when their leaf went (not final, or dead)

The events are cut by their notification's id, by the same ranges: a notification and its events go together.
Every lookup by id names the key, so PostgreSQL plans it on its own leaf alone.
"""

import logging
import time
import uuid
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from jobs.ids import uuid7_floor, uuid7_time
from jobs.partitions import Leaf, Table, leaf_add, leaf_remove, leaves
from notifications.models import PRUNABLE_STATUSES, NotificationStatus, cancelled_unsent_sql

logger = logging.getLogger(__name__)

NOTIFICATIONS = Table("notifications_notification", "id")
EVENTS = Table("notifications_notificationevent", "notification_id", leaf_primary_key="id")
FAMILY = [NOTIFICATIONS, EVENTS]

#: A notification of a dropped leaf that stays (in the default leaf): one not final yet, or dead (kept as long as
#: its dead letter).  In two parts by status, each one a partial index of the leaf serves (scheduled rows have an
#: index of their own), so that the few such rows among millions are found in milliseconds while the drop holds its
#: lock; one condition over both was a sequential scan of the leaf (0.3 s a million rows, twice).
#: Bandit B608: the rule's own SQL, no value from outside.
_STAYING = [s for s in NotificationStatus.values if s not in PRUNABLE_STATUSES]
_STAYS_PARTS = tuple(
    f"t.status IN ({', '.join(repr(s) for s in statuses)}) AND NOT {cancelled_unsent_sql('t')}"  # nosec B608
    for statuses in ([s for s in _STAYING if s != "scheduled"], ["scheduled"])
)
_STAYS = " OR ".join(f"({part})" for part in _STAYS_PARTS)
_KEPT_IDS = " UNION ALL ".join(f"SELECT t.id FROM {{{NOTIFICATIONS.name}}} t WHERE {part}" for part in _STAYS_PARTS)  # nosec B608
KEEP = {
    NOTIFICATIONS.name: _STAYS_PARTS,
    EVENTS.name: (f"t.notification_id IN ({_KEPT_IDS})",),  # nosec B608
}

WEEK_PREFIX, CAMPAIGN_PREFIX = "w", "c"
#: A campaigns' leaf is at least this many campaigns wide: a burst of campaigns on a platform's first day would
#: otherwise make a leaf each (every lookup without an id plans every leaf); a weekly newsletter's rows then stay up
#: to this many weeks longer than the marketing keeping time.
CAMPAIGNS_PER_LEAF_AT_LEAST = 4


def week_start(moment: datetime) -> datetime:
    """Monday 00:00 UTC of `moment`'s week."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def week_leaf(monday: datetime) -> Leaf:
    return Leaf(f"{WEEK_PREFIX}{monday:%Y%m%d}", str(uuid7_floor(monday)), str(uuid7_floor(monday + timedelta(days=7))))


def recent_ids(now: datetime | None = None) -> tuple[uuid.UUID, uuid.UUID]:
    """The ids of this week's leaf up to an hour ahead (a clock running fast), for a statement that looks for recent
    single sends by something else than their id: with these bounds it is planned on that leaf alone."""
    now = now or timezone.now()
    return uuid7_floor(week_start(now)), uuid7_floor(now + timedelta(hours=1))


def campaign_floor(campaign_id: int) -> uuid.UUID:
    """The lowest id a row of `campaign_id` can have (its 48 leading bits are the campaign's id)."""
    return uuid.UUID(f"{campaign_id:012x}{'0' * 20}")


def campaign_leaf(first: int, end: int) -> Leaf:
    """The leaf of campaigns first .. end - 1."""
    return Leaf(f"{CAMPAIGN_PREFIX}{first:010d}", str(campaign_floor(first)), str(campaign_floor(end)))


def _campaign_range(leaf: Leaf) -> tuple[int, int]:
    return uuid.UUID(leaf.low).int >> 80, uuid.UUID(leaf.high).int >> 80


#: Tries at adding a leaf.  Attaching it takes the default leaf's lock, so it can meet a statement that takes the two
#: tables in the other order (the receipts' link: events, then notifications), a deadlock PostgreSQL ends by failing
#: one of them; or a long reader (the lock timeout).  Both pass.
ADD_ATTEMPTS = 3


def _add(leaf: Leaf) -> bool:
    """Add `leaf`, trying again after a deadlock or a lock not had in time; whether it was added."""
    for attempt in range(1, ADD_ATTEMPTS + 1):
        try:
            leaf_add(FAMILY, leaf)
        except DatabaseError as error:
            if attempt == ADD_ATTEMPTS:
                # Its rows wait in the default leaf meanwhile (as safe); the next run adds it, moving them in.
                logger.warning("partition %s was not added now: %s", leaf.suffix, error)
                return False
            time.sleep(0.2 * attempt)
        else:
            return True
    return False


def partitions_ensure(*, now: datetime | None = None, since: datetime | None = None) -> list[str]:
    """Every week's leaf from `since` (default: this week) to PARTITIONS_AHEAD_WEEKS ahead; the ones added."""
    return [leaf.suffix for leaf in weeks_missing(now=now, since=since) if _add(leaf)]


def weeks_missing(*, now: datetime | None = None, since: datetime | None = None) -> list[Leaf]:
    """The weeks' leaves due (weeks_due) that either table lacks."""
    have = {leaf.suffix for leaf in leaves(NOTIFICATIONS)} & {leaf.suffix for leaf in leaves(EVENTS)}
    return [leaf for leaf in weeks_due(now=now, since=since) if leaf.suffix not in have]


def weeks_due(*, now: datetime | None = None, since: datetime | None = None) -> list[Leaf]:
    """The weeks' leaves that should exist: from `since` (default: this week) to PARTITIONS_AHEAD_WEEKS ahead."""
    now = now or timezone.now()
    monday, last = week_start(since or now), week_start(now) + timedelta(weeks=settings.PARTITIONS_AHEAD_WEEKS)
    due = []
    while monday <= last:
        due.append(week_leaf(monday))
        monday += timedelta(days=7)
    return due


def campaign_partition_ensure(*, campaign_id: int) -> str | None:
    """The leaf campaign `campaign_id`'s rows go to, added if none holds them yet (its suffix).  None when it could
    not be added now (a lock not had in time, another process adding it): the rows then wait in the default leaf,
    which is as safe, and go with the row-by-row retention instead of a drop."""
    from notifications.models import Campaign

    present = leaves(NOTIFICATIONS)
    for leaf in present:
        if leaf.suffix.startswith(CAMPAIGN_PREFIX):
            first, end = _campaign_range(leaf)
            if first <= campaign_id < end:
                return leaf.suffix
    # As wide as the campaigns started in the past week, so that a leaf holds about a week of them.
    week = Campaign.objects.filter(created_at__gte=timezone.now() - timedelta(days=7)).count()
    width = max(CAMPAIGNS_PER_LEAF_AT_LEAST, week)
    end = campaign_id + width
    for leaf in present:
        if leaf.suffix.startswith(CAMPAIGN_PREFIX):
            first, _ = _campaign_range(leaf)
            if campaign_id < first < end:
                end = first
    leaf = campaign_leaf(campaign_id, end)
    return leaf.suffix if _add(leaf) else None


# --- what retention drops --------------------------------------------------------------------


def droppable_weeks(cutoff: datetime) -> list[Leaf]:
    """The weeks that ended before `cutoff`."""
    return [
        leaf
        for leaf in leaves(NOTIFICATIONS)
        if leaf.suffix.startswith(WEEK_PREFIX) and uuid7_time(uuid.UUID(leaf.high)) <= cutoff
    ]


def droppable_campaigns(cutoff: datetime) -> list[Leaf]:
    """The campaign leaves whose every campaign finished before `cutoff` (one not started yet keeps its leaf)."""
    found = []
    with connection.cursor() as cursor:
        for leaf in leaves(NOTIFICATIONS):
            if not leaf.suffix.startswith(CAMPAIGN_PREFIX):
                continue
            first, end = _campaign_range(leaf)
            cursor.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM notifications_campaign WHERE id >= %s AND id < %s "
                "AND (finished_at IS NULL OR finished_at >= %s))",
                [first, end, cutoff],
            )
            if cursor.fetchone()[0]:
                found.append(leaf)
    return found


def partition_count(leaf: Leaf) -> int:
    """How many notifications dropping `leaf` would delete (all but those it keeps): counted, for a dry run."""
    with connection.cursor() as cursor:
        # Bandit B608: the leaf's name is the code's own, the condition a constant of this module.
        cursor.execute(f"SELECT count(*) FROM {NOTIFICATIONS.leaf(leaf.suffix)} t WHERE NOT ({_STAYS})")  # nosec B608
        return cursor.fetchone()[0]


def partition_drop(leaf: Leaf) -> tuple[int, int]:
    """Drop `leaf` of the notifications and their events, keeping (in the default leaves) what is not final or dead;
    (rows dropped, about; rows kept)."""
    return leaf_remove(FAMILY, leaf, keep=KEEP)

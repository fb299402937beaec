"""How long the notification domain keeps its rows (settings.RETENTION_DAYS), as rules for the runtime's pruner
(jobs/retention.py).  Most go a leaf at a time (notifications/partitions.py): a week of single sends with its
events once the week is past the notifications' keeping time, a run of campaigns once every one of them finished
before the marketing keeping time; what such a drop keeps (rows not final, dead ones) waits in the default leaf
with the rows from before the partitioning, and goes row by row from there: finished ones, marketing sooner, dead
ones as long as their dead letters, events by themselves.  Then the batches and segments of campaigns finished long
ago."""

import logging
from datetime import datetime

from django.db import OperationalError, connection

from jobs.retention import Pruned, Rule, prune, retention_days, runtime_rules, walk_by_id
from notifications.models import PRUNABLE_STATUSES, cancelled_unsent_sql
from notifications.partitions import (
    EVENTS,
    NOTIFICATIONS,
    droppable_campaigns,
    droppable_weeks,
    partition_count,
    partition_drop,
    partitions_ensure,
)

#: Final statuses a notification is pruned from (dead ones follow the dead letters' keeping time), a cancelled
#: campaign's unsent rows among them (skipped from the cancel on, whether or not the sweep rewrote them yet); a
#: campaign's rows only once it has finished, so that no recount of a batch of a running campaign ever sees its rows
#: vanish.
# Bandit B608: the rule's own SQL (models.py), no value from outside.
DONE = (
    f"(n.status IN {PRUNABLE_STATUSES} OR {cancelled_unsent_sql('n')}) AND (n.campaign_id IS NULL "  # nosec B608
    "OR n.campaign_id IN (SELECT id FROM notifications_campaign WHERE finished_at IS NOT NULL))"
)

logger = logging.getLogger(__name__)

# A batch of old notifications of the default leaf, found through its notif_created_idx, deleted with their events
# (in the events' default leaf, as their ids are in no range) in one statement.  Bandit B608 (SQL built from
# strings): the tables and conditions are constants of this module.
_DELETE_NOTIFICATIONS = f"""
WITH gone AS (
    DELETE FROM {NOTIFICATIONS.default} WHERE id IN (
        SELECT id FROM {NOTIFICATIONS.default} n WHERE n.created_at < %(cutoff)s AND {{condition}} LIMIT %(size)s
    )
    RETURNING id
),
events AS (
    DELETE FROM {EVENTS.default} e USING gone WHERE e.notification_id = gone.id RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM events)
"""  # nosec B608
_COUNT_NOTIFICATIONS = f"SELECT count(*) FROM {NOTIFICATIONS.default} n WHERE n.created_at < %s AND {{condition}}"  # nosec B608


def _partitions(name: str, kind: str, droppable) -> Rule:
    """Leaves past their keeping time, dropped one per batch (with the empty ones before it)."""

    def delete_batch(cutoff: datetime, size: int) -> int:
        for leaf in droppable(cutoff):
            try:
                dropped, _kept = partition_drop(leaf)
            except OperationalError as error:
                # A long reader held the table past PARTITION_LOCK_TIMEOUT: nothing changed, the next run tries again.
                logger.warning("retention: partition %s not dropped now: %s", leaf.suffix, error)
                return 0
            if dropped:
                return dropped
        return 0

    def count(cutoff: datetime) -> int:
        return sum(partition_count(leaf) for leaf in droppable(cutoff))

    return Rule(name, retention_days(kind), delete_batch, count, atomic=False)


def _notifications(name: str, kind: str, condition: str) -> Rule:
    def delete_batch(cutoff: datetime, size: int) -> int:
        with connection.cursor() as cursor:
            cursor.execute(_DELETE_NOTIFICATIONS.format(condition=condition), {"cutoff": cutoff, "size": size})
            notifications, _events = cursor.fetchone()
        return notifications

    def count(cutoff: datetime) -> int:
        with connection.cursor() as cursor:
            cursor.execute(_COUNT_NOTIFICATIONS.format(condition=condition), [cutoff])
            return cursor.fetchone()[0]

    return Rule(name, retention_days(kind), delete_batch, count)


def _campaign_parts() -> Rule:
    """Batches and segments of campaigns that finished before the cutoff (their rows are gone by then; the
    campaign row keeps its counters as the record)."""
    finished = "SELECT id FROM notifications_campaign WHERE finished_at < %(cutoff)s"

    def delete_batch(cutoff: datetime, size: int) -> int:
        deleted = 0
        with connection.cursor() as cursor:
            for table in ("notifications_campaignbatch", "notifications_campaignsegment"):
                # Bandit B608: the table names are the two constants above.
                cursor.execute(
                    f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE campaign_id IN ({finished}) "  # nosec B608
                    "LIMIT %(size)s)",
                    {"cutoff": cutoff, "size": size},
                )
                deleted += cursor.rowcount
        return deleted

    def count(cutoff: datetime) -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT (SELECT count(*) FROM notifications_campaignbatch WHERE campaign_id IN "
                f"({finished})) + (SELECT count(*) FROM notifications_campaignsegment WHERE campaign_id IN ({finished}))",  # nosec B608
                {"cutoff": cutoff},
            )
            return cursor.fetchone()[0]

    return Rule("batches of finished campaigns", retention_days("marketing_notifications"), delete_batch, count)


def retention_rules() -> list[Rule]:
    """Every rule of the platform, the runtime's included, in the order they run."""
    events_delete, events_count = walk_by_id(EVENTS.default, time_column="created_at", condition="true")
    return [
        _partitions("weeks of notifications (partitions)", "notifications", droppable_weeks),
        _partitions("runs of campaigns (partitions)", "marketing_notifications", droppable_campaigns),
        _notifications("marketing notifications", "marketing_notifications", f"n.priority = 'marketing' AND {DONE}"),
        _notifications("notifications", "notifications", DONE),
        _notifications("dead notifications", "dead_letters", "n.status = 'dead'"),
        Rule("events", retention_days("events"), events_delete, events_count),
        _campaign_parts(),
        *runtime_rules(),
    ]


def retention_prune(*, dry_run: bool = False, max_seconds: float | None = None, batch: int | None = None):
    """Make the coming weeks' partitions, then apply every rule (see jobs.retention.prune)."""
    if not dry_run:
        partitions_ensure()
    return prune(retention_rules(), dry_run=dry_run, max_seconds=max_seconds, batch=batch)


__all__ = ["Pruned", "retention_prune", "retention_rules"]

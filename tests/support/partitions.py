"""Rows moved back in time the way retention sees time: into an earlier week's partition (their id says when they
were made), with their events, and their created_at set to match."""

import uuid
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

from jobs.ids import uuid7
from notifications.models import Notification
from notifications.partitions import partitions_ensure


def id_at(moment: datetime) -> uuid.UUID:
    """A version-7 id made at `moment`."""
    return uuid7(moment)


def aged(notification: Notification, days: float, status: str = "sent") -> Notification:
    """The notification as if written `days` ago and now `status` (its status event written by the trigger), in
    that week's partition (made if missing)."""
    Notification.objects.filter(pk=notification.pk).update(status=status)
    at = timezone.now() - timedelta(days=days)
    partitions_ensure(since=at)
    new_id = id_at(at)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE notifications_notification SET id = %s, created_at = %s WHERE id = %s",
            [new_id, at, notification.pk],
        )
        cursor.execute(
            "UPDATE notifications_notificationevent SET notification_id = %s, created_at = %s, at = %s "
            "WHERE notification_id = %s",
            [new_id, at, at, notification.pk],
        )
    return Notification.objects.get(pk=new_id)


def leaf_of(table: str, column: str, value) -> str:
    """The leaf of `table` that holds the rows whose `column` is `value`."""
    with connection.cursor() as cursor:
        # Bandit B608: the table and column are the test's own constants.
        cursor.execute(f"SELECT DISTINCT tableoid::regclass::text FROM {table} WHERE {column} = %s", [value])  # nosec B608
        found = [name for (name,) in cursor.fetchall()]
    assert len(found) == 1, found
    return found[0]

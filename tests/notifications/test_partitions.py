"""The notifications and their events are partitioned by the notification's id: a week of single sends, a run of
campaigns, and a default partition for the rest.  Rows land in their partition, a partition added takes over the
rows that waited for it, a partition dropped keeps what must stay, and a lookup by id is planned on one partition."""

import re
import time
from datetime import timedelta

import psycopg
import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs.partitions import leaf_add, leaves
from notifications.counting import campaign_notifications
from notifications.models import Notification, NotificationEvent
from notifications.partitions import (
    CAMPAIGN_PREFIX,
    FAMILY,
    NOTIFICATIONS,
    partition_drop,
    partitions_ensure,
    week_leaf,
    week_start,
)
from tests.support.partitions import aged, id_at, leaf_of
from tests.support.sending import deliver, fanned_out_campaign, submit

pytestmark = pytest.mark.django_db

LEAF = re.compile(r"\bnotifications_notification_(w\d{8}|c\d{10}|default)\b")


def sent(notification: Notification) -> Notification:
    """Its status set to sent (the trigger writes its `sent` event)."""
    Notification.objects.filter(pk=notification.pk).update(status="sent")
    return notification


def test_a_single_send_and_its_events_live_in_the_partition_of_its_week():
    notification = sent(submit(to="week@example.com"))

    suffix = week_leaf(week_start(timezone.now())).suffix
    assert leaf_of("notifications_notification", "id", notification.pk) == f"notifications_notification_{suffix}"
    assert leaf_of("notifications_notificationevent", "notification_id", notification.pk) == (
        f"notifications_notificationevent_{suffix}"
    )


def test_a_campaigns_rows_live_in_a_partition_of_campaigns_made_at_its_fan_out():
    campaign = fanned_out_campaign("parted", count=3)
    campaign_notifications(campaign).update(status="sent")

    leaf = leaf_of("notifications_notification", "campaign_id", campaign.pk)
    assert leaf.startswith(f"notifications_notification_{CAMPAIGN_PREFIX}")
    suffix = leaf.removeprefix("notifications_notification_")
    events = {leaf_of("notifications_notificationevent", "notification_id", pk) for pk in
              campaign_notifications(campaign).values_list("pk", flat=True)}  # fmt: skip
    assert events == {f"notifications_notificationevent_{suffix}"}

    second = fanned_out_campaign("parted-too", count=2)
    assert leaf_of("notifications_notification", "campaign_id", second.pk) == leaf, (
        "a leaf is as many campaigns wide as were started in the past week"
    )


def test_a_partition_added_takes_over_the_rows_that_waited_for_it_in_the_default_partition():
    later = timezone.now() + timedelta(weeks=4)
    notification = submit(to="early@example.com")
    waiting = id_at(later)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE notifications_notification SET id = %s WHERE id = %s", [waiting, notification.pk])
    sent(Notification.objects.get(pk=waiting))
    assert leaf_of("notifications_notification", "id", waiting) == NOTIFICATIONS.default

    leaf = week_leaf(week_start(later))
    assert leaf_add(FAMILY, leaf) == 1

    assert leaf_of("notifications_notification", "id", waiting) == f"notifications_notification_{leaf.suffix}"
    assert leaf_of("notifications_notificationevent", "notification_id", waiting) == (
        f"notifications_notificationevent_{leaf.suffix}"
    )
    assert leaf.suffix in {found.suffix for found in leaves(NOTIFICATIONS)}


def test_dropping_a_week_keeps_what_is_not_final_and_the_dead_in_the_default_partition_with_their_events():
    gone = aged(submit(to="gone@example.com"), 100)
    waiting = aged(submit(to="waiting@example.com"), 100, "failed")
    dead = aged(submit(to="dead@example.com"), 100, "dead")
    gone_events = NotificationEvent.objects.filter(notification=gone).count()
    assert gone_events and NotificationEvent.objects.filter(notification=dead).exists()

    leaf = week_leaf(week_start(timezone.now() - timedelta(days=100)))
    assert partition_drop(leaf) == (1, 2)

    assert not Notification.objects.filter(pk=gone.pk).exists()
    assert not NotificationEvent.objects.filter(notification_id=gone.pk).exists()
    for kept in (waiting, dead):
        assert leaf_of("notifications_notification", "id", kept.pk) == NOTIFICATIONS.default
    assert leaf_of("notifications_notificationevent", "notification_id", dead.pk) == (
        "notifications_notificationevent_default"
    )
    assert leaf.suffix not in {found.suffix for found in leaves(NOTIFICATIONS)}


def test_every_statement_of_a_delivery_is_planned_on_the_partition_of_its_rows(ledger, closed_breakers):
    partitions_ensure(since=timezone.now() - timedelta(weeks=12))
    notification = submit(to="planned@example.com")
    with CaptureQueriesContext(connection) as queries:
        assert deliver(notification).status == "sent"

    this_week = week_leaf(week_start(timezone.now())).suffix
    statements = [q["sql"] for q in queries.captured_queries if '"notifications_notification"' in q["sql"]
                  or "notifications_notification " in q["sql"] or "notifications_notification\n" in q["sql"]]  # fmt: skip
    assert len(statements) >= 3, "the claim, the recording of the send and the refresh at least"
    with connection.cursor() as cursor:
        for sql in statements:
            # Bandit B608: a statement Django just ran, its values already bound.
            cursor.execute(f"EXPLAIN {sql}")  # nosec B608
            planned = {match for (line,) in cursor.fetchall() for match in LEAF.findall(line)}
            assert planned == {this_week}, (planned, sql)


def test_a_drop_waiting_behind_a_long_reader_gives_up_in_time_and_changes_nothing(settings):
    settings.PARTITION_LOCK_TIMEOUT = 0.5
    old = aged(submit(to="held@example.com"), 100)
    leaf = week_leaf(week_start(timezone.now() - timedelta(days=100)))
    params = connection.settings_dict
    reader = psycopg.connect(host=params["HOST"], port=params["PORT"], user=params["USER"], dbname=params["NAME"])
    try:
        reader.execute("BEGIN")
        reader.execute("SET LOCAL lock_timeout = '5s'")
        # What any reader of the table holds until its transaction ends (the parent alone here: the test's own
        # transaction, which made this week's partitions, holds the others).
        reader.execute("LOCK TABLE ONLY notifications_notification IN ACCESS SHARE MODE")
        began = time.monotonic()
        with pytest.raises(OperationalError, match="lock timeout"):
            partition_drop(leaf)
        assert time.monotonic() - began < 5
    finally:
        reader.close()
    assert leaf_of("notifications_notification", "id", old.pk) == f"notifications_notification_{leaf.suffix}"
    assert leaf.suffix in {found.suffix for found in leaves(NOTIFICATIONS)}

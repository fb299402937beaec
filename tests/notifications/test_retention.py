"""Retention: what is past its keeping time goes, a week's partition at a time or in small batches, with its events;
what is not final, not old enough, or in a campaign finished too recently stays; a dry run counts and deletes
nothing; one pruner at a time."""

from datetime import timedelta
from io import StringIO

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from jobs.models import DeadLetter, Job
from jobs.retention import PRUNE_LOCK
from notifications.counting import campaign_notifications
from notifications.models import Campaign, Notification, NotificationEvent
from notifications.retention import retention_prune
from tests.support.partitions import aged, leaf_of
from tests.support.sending import fanned_out_campaign, submit

pytestmark = pytest.mark.django_db


def remaining(*notifications: Notification) -> set[str]:
    return {
        str(pk) for pk in Notification.objects.filter(pk__in=[n.pk for n in notifications]).values_list("pk", flat=True)
    }


@pytest.fixture
def rows():
    """One notification per rule's edge, named by what should happen to it."""
    return {
        "old sent": aged(submit(to="old-sent@example.com"), 100),
        "recent sent": aged(submit(to="recent-sent@example.com"), 60),
        "old cancelled": aged(submit(to="old-cancelled@example.com"), 100, "cancelled"),
        "old queued": aged(submit(to="old-queued@example.com"), 100, "queued"),
        "old dead": aged(submit(to="old-dead@example.com"), 100, "dead"),
        "ancient dead": aged(submit(to="ancient-dead@example.com"), 400, "dead"),
        "old marketing": aged(submit(priority="marketing", to="old-marketing@example.com"), 40),
    }


def test_prune_deletes_what_is_past_its_keeping_time_with_its_events_and_keeps_the_rest(rows):
    results = retention_prune(batch=2)

    # A marketing notification sent on its own (no campaign) is kept with its week, like any single send.
    gone = {"old sent", "old cancelled", "ancient dead"}
    assert remaining(*rows.values()) == {str(rows[name].pk) for name in rows.keys() - gone}
    assert not NotificationEvent.objects.filter(notification_id__in=[rows[name].pk for name in gone]).exists()
    assert NotificationEvent.objects.filter(notification=rows["recent sent"]).exists()
    by_name = {r.name: r for r in results}
    assert by_name["weeks of notifications (partitions)"].rows == 2, "old sent and old cancelled, with their week"
    assert by_name["dead notifications"].rows == 1, "ancient dead, kept out of its week, then gone after a year"
    assert (by_name["marketing notifications"].rows, by_name["notifications"].rows) == (0, 0)
    assert all(r.done for r in results)


def test_a_dry_run_counts_what_would_go_and_deletes_nothing(rows):
    out = StringIO()
    call_command("prune", "--dry-run", stdout=out)

    assert remaining(*rows.values()) == {str(n.pk) for n in rows.values()}
    counts = {line.split(" older than")[0].strip(): line.rsplit(": ", 1)[1] for line in out.getvalue().splitlines()}
    # The weeks of 100 and 400 days ago hold five rows; three of them (queued, dead) would be kept out of the drop.
    assert counts["weeks of notifications (partitions)"] == "would delete 2"
    assert counts["notifications"] == "would delete 0", "nothing waits in the default partition"


def test_a_running_campaigns_rows_are_kept_until_it_has_finished():
    campaign = fanned_out_campaign("kept", count=4)
    campaign_notifications(campaign).update(status="sent", created_at=timezone.now() - timedelta(days=40))
    assert leaf_of("notifications_notification", "campaign_id", campaign.pk).startswith("notifications_notification_c")

    retention_prune()
    assert campaign_notifications(campaign).count() == 4, "a recount of a running campaign must still find its rows"

    Campaign.objects.filter(pk=campaign.pk).update(status="completed", finished_at=timezone.now() - timedelta(days=1))
    retention_prune()
    assert campaign_notifications(campaign).count() == 4, "kept for the marketing keeping time after it finished"

    Campaign.objects.filter(pk=campaign.pk).update(finished_at=timezone.now() - timedelta(days=31))
    results = {r.name: r for r in retention_prune()}
    assert campaign_notifications(campaign).count() == 0
    assert results["runs of campaigns (partitions)"].rows == 4
    assert Campaign.objects.filter(pk=campaign.pk).exists(), "the campaign row and its counters stay as the record"


def test_events_jobs_and_dead_letters_walk_past_rows_they_keep():
    old = timezone.now() - timedelta(days=400)
    jobs = [Job.objects.create(name="chores.call_partner", queue="jobs.work", status=s, max_attempts=4, retry_from=timezone.now()) for s in
            ("running", "waiting", "succeeded", "succeeded", "dead", "succeeded")]  # fmt: skip
    Job.objects.filter(pk__in=[j.pk for j in jobs]).update(created_at=old)
    fresh = Job.objects.create(
        name="chores.call_partner", queue="jobs.work", status="succeeded", max_attempts=4, retry_from=timezone.now()
    )
    letter = DeadLetter.objects.create(
        job_name="x", error_class="E", message="m", arguments={}, attempts=1, first_failed_at=old, last_failed_at=old
    )
    DeadLetter.objects.filter(pk=letter.pk).update(created_at=old)
    event = NotificationEvent.objects.create(kind="delivered", provider="postmark")
    NotificationEvent.objects.filter(pk=event.pk).update(created_at=old)

    retention_prune(batch=2)

    assert set(Job.objects.values_list("status", flat=True)) == {"running", "waiting", "dead", "succeeded"}
    assert Job.objects.filter(status="succeeded").get().pk == fresh.pk
    assert not DeadLetter.objects.filter(pk=letter.pk).exists()
    assert not NotificationEvent.objects.filter(pk=event.pk).exists()


def test_one_pruner_at_a_time(rows):
    settings_dict = connection.settings_dict
    other = psycopg.connect(
        host=settings_dict["HOST"], port=settings_dict["PORT"], user=settings_dict["USER"], dbname=settings_dict["NAME"]
    )
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [PRUNE_LOCK])
        assert retention_prune() is None
        with pytest.raises(CommandError, match="another prune is running"):
            call_command("prune")
    finally:
        other.close()
    assert str(rows["old sent"].pk) in remaining(rows["old sent"])


@pytest.mark.parametrize(
    ("args", "reason"), [(["--batch", "0"], "--batch must be"), (["--max-seconds", "0"], "--max-seconds")]
)
def test_the_command_refuses_bad_options(args, reason):
    with pytest.raises(CommandError, match=reason):
        call_command("prune", *args)

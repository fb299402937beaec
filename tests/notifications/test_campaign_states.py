"""Campaign state changes meet batches in flight: nothing parked for ever, a resumed campaign completes, and a
batch whose runs keep dying is dead-lettered (and revived by its replay) instead of running for ever."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from jobs.deadletters import deadletter_replay
from jobs.models import DeadLetter
from notifications import campaign_delivery
from notifications.campaign_delivery import campaign_batch_send
from notifications.campaigns import campaign_cancel, campaign_pause, campaign_resume
from notifications.counting import campaign_batch_recount, campaign_notifications
from notifications.models import Campaign, CampaignBatch
from tests.support.sending import fanned_out_campaign

pytestmark = pytest.mark.django_db


def test_a_batch_handed_back_just_after_a_resume_is_queued_not_parked(ledger, django_capture_on_commit_callbacks):
    campaign = fanned_out_campaign("resume-race")
    (batch,) = CampaignBatch.objects.filter(campaign=campaign)
    campaign_pause(campaign_id=campaign.pk)
    claimed = campaign_delivery._claim_batch(batch.pk)  # a worker took the batch while the campaign was paused
    with django_capture_on_commit_callbacks(execute=True):
        campaign_resume(campaign_id=campaign.pk)  # the batch was not paused yet: resume cannot requeue it

    with django_capture_on_commit_callbacks(execute=False) as published:
        campaign_delivery._run(claimed)  # the worker still believes the campaign is paused

    batch.refresh_from_db()
    assert batch.status == "queued", "the campaign runs again: the batch must not wait for a resume that came"
    assert len(published) == 1
    campaign_batch_send(batch_id=batch.pk)
    assert Campaign.objects.get(pk=campaign.pk).status == "completed"


def test_a_batch_handed_back_just_after_a_cancel_skips_its_rows(ledger):
    campaign = fanned_out_campaign("cancel-race")
    (batch,) = CampaignBatch.objects.filter(campaign=campaign)
    campaign_pause(campaign_id=campaign.pk)
    claimed = campaign_delivery._claim_batch(batch.pk)
    campaign_cancel(campaign_id=campaign.pk)

    campaign_delivery._run(claimed)

    batch.refresh_from_db()
    assert batch.status == "done"
    assert set(campaign_notifications(campaign).values_list("status", flat=True)) == {"skipped"}
    assert ledger.entries() == []


def test_a_campaign_whose_last_rows_finished_while_it_was_paused_completes_on_resume(ledger):
    campaign = fanned_out_campaign("paused-done")
    campaign_pause(campaign_id=campaign.pk)
    # The calls in flight when the pause came were the last ones: every row is done, every batch too.
    campaign_notifications(campaign).update(status="sent", sent_at=timezone.now())
    for batch in CampaignBatch.objects.filter(campaign=campaign):
        CampaignBatch.objects.filter(pk=batch.pk).update(status="done")
        campaign_batch_recount(batch_id=batch.pk)

    campaign_resume(campaign_id=campaign.pk)

    campaign.refresh_from_db()
    assert (campaign.status, campaign.sent_count, campaign.remaining_count) == ("completed", 3, 0)


def test_a_batch_whose_runs_keep_dying_is_dead_lettered_with_its_rows_and_revived_by_a_replay(ledger):
    campaign = fanned_out_campaign("doomed")
    (batch,) = CampaignBatch.objects.filter(campaign=campaign)
    # Its last CAMPAIGN_BATCH_MAX_RUNS runs died (worker killed, task failing): the lease ran out each time.
    CampaignBatch.objects.filter(pk=batch.pk).update(
        status="sending",
        runs=settings.CAMPAIGN_BATCH_MAX_RUNS,
        unfinished_runs=settings.CAMPAIGN_BATCH_MAX_RUNS,
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )

    campaign_batch_send(batch_id=batch.pk)

    batch.refresh_from_db()
    campaign.refresh_from_db()
    assert batch.status == "dead"
    assert set(campaign_notifications(campaign).values_list("status", flat=True)) == {"dead"}
    assert (campaign.status, campaign.dead_count) == ("completed", 3), "the campaign is not stuck on it"
    letter = DeadLetter.objects.get(job_name="notifications.campaign_batch", subject_id=str(batch.pk))
    assert "runs in a row did not finish" in letter.message
    assert ledger.entries() == []

    assert deadletter_replay(dead_letter=letter)
    batch.refresh_from_db()
    assert (batch.status, batch.unfinished_runs) == ("queued", 0)
    campaign_batch_send(batch_id=batch.pk)

    campaign.refresh_from_db()
    assert (campaign.status, campaign.sent_count, campaign.dead_count) == ("completed", 3, 0)
    assert len(ledger.entries()) == 3


def test_a_run_that_ends_resets_the_count_of_runs_that_died(ledger):
    campaign = fanned_out_campaign("survivor")
    (batch,) = CampaignBatch.objects.filter(campaign=campaign)
    CampaignBatch.objects.filter(pk=batch.pk).update(
        status="sending",
        unfinished_runs=settings.CAMPAIGN_BATCH_MAX_RUNS - 1,
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    campaign_batch_send(batch_id=batch.pk)
    batch.refresh_from_db()
    assert (batch.status, batch.unfinished_runs) == ("done", 0)


def test_a_segment_whose_rows_exist_already_is_written_without_them(ledger):
    """The fan-out inserts without ON CONFLICT (a segment is written once); should its rows exist all the same, it
    writes the others and counts only those."""
    from notifications.campaigns import campaign_fanout_segment
    from notifications.models import CampaignSegment, Notification
    from tests.support.sending import fanned_out_campaign

    campaign = fanned_out_campaign("rewritten", count=4)
    segment = CampaignSegment.objects.get(campaign=campaign)
    rows = Notification.objects.filter(campaign=campaign).order_by("pk")
    kept = [row.pk for row in rows[:2]]
    Notification.objects.filter(campaign=campaign).exclude(pk__in=kept).delete()
    CampaignSegment.objects.filter(pk=segment.pk).update(done_at=None)

    assert campaign_fanout_segment(segment_id=segment.pk) == 2
    assert Notification.objects.filter(campaign=campaign).count() == 4

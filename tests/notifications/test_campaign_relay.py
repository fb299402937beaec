"""The campaign relay: batches and segments whose broker message is lost, due or orphaned are queued again;
batches that are simply waiting their turn in a busy queue are left alone."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.redis import QueueHead
from notifications.campaigns import campaign_create
from notifications.models import BatchStatus, CampaignBatch, CampaignSegment
from notifications.recovery import campaign_relay

pytestmark = pytest.mark.django_db


def empty(queue: str) -> QueueHead:
    return QueueHead(depth=0, published_at=None)


def busy_since(seconds_ago: float):
    """A queue of 5,000 messages whose oldest was published `seconds_ago`."""
    return lambda queue: QueueHead(depth=5_000, published_at=timezone.now().timestamp() - seconds_ago)


@pytest.fixture
def campaign():
    return campaign_create(name="relay", template="newsletter", channel="email", context={"headline": "h", "body": "b"})


def batch(campaign, first: int, **fields) -> CampaignBatch:
    return CampaignBatch.objects.create(
        campaign=campaign, first_recipient_id=first, last_recipient_id=first + 9, size=10, **fields
    )


def test_lost_due_and_orphaned_batches_are_queued_again(campaign, django_capture_on_commit_callbacks):
    long_ago = timezone.now() - timedelta(minutes=10)
    lost = batch(campaign, 1, status=BatchStatus.QUEUED, queued_at=long_ago)
    due = batch(campaign, 11, status=BatchStatus.DEFERRED, next_attempt_at=long_ago)
    orphaned = batch(campaign, 21, status=BatchStatus.SENDING, lease_expires_at=long_ago)
    later = batch(campaign, 31, status=BatchStatus.DEFERRED, next_attempt_at=timezone.now() + timedelta(hours=1))
    done = batch(campaign, 41, status=BatchStatus.DONE, queued_at=long_ago)

    with django_capture_on_commit_callbacks() as callbacks:
        assert campaign_relay(queue_heads=empty) == 3

    assert len(callbacks) == 3
    statuses = dict(CampaignBatch.objects.values_list("pk", "status"))
    assert [statuses[b.pk] for b in (lost, due, orphaned)] == ["queued"] * 3
    assert (statuses[later.pk], statuses[done.pk]) == ("deferred", "done")
    lost.refresh_from_db()
    assert lost.queued_at > long_ago


def test_a_batch_waiting_in_a_busy_queue_is_not_published_twice(campaign, django_capture_on_commit_callbacks):
    batch(campaign, 1, status=BatchStatus.QUEUED, queued_at=timezone.now() - timedelta(minutes=10))
    with django_capture_on_commit_callbacks() as callbacks:
        # The queue's oldest message is older than the batch's: its message is still waiting in it.
        assert campaign_relay(queue_heads=busy_since(seconds_ago=15 * 60)) == 0
    assert callbacks == []


def test_a_batch_whose_message_was_lost_from_a_busy_queue_is_published_again(
    campaign, django_capture_on_commit_callbacks
):
    lost = batch(campaign, 1, status=BatchStatus.QUEUED, queued_at=timezone.now() - timedelta(minutes=10))
    with django_capture_on_commit_callbacks() as callbacks:
        # Everything published before the queue's head was taken off it; this batch never ran.
        assert campaign_relay(queue_heads=busy_since(seconds_ago=60)) == 1
    assert len(callbacks) == 1
    lost.refresh_from_db()
    assert lost.queued_at > timezone.now() - timedelta(minutes=1)


def test_an_unwritten_segment_whose_message_was_lost_is_queued_again(campaign, django_capture_on_commit_callbacks):
    segment = CampaignSegment.objects.create(
        campaign=campaign, first_recipient_id=1, last_recipient_id=100, queued_at=timezone.now() - timedelta(hours=1)
    )
    CampaignSegment.objects.create(
        campaign=campaign, first_recipient_id=101, last_recipient_id=200, queued_at=timezone.now() - timedelta(hours=1),
        done_at=timezone.now(),
    )  # fmt: skip
    with django_capture_on_commit_callbacks() as callbacks:
        assert campaign_relay(queue_heads=empty) == 1
    assert len(callbacks) == 1
    segment.refresh_from_db()
    assert segment.queued_at > timezone.now() - timedelta(minutes=1)

"""Replaying dead letters of a job that is not a notification: its app's replayer runs, task-level letters are
republished, and letters that cannot be replayed say why."""

import pytest

from jobs.deadletters import deadletter_record, deadletter_replay, deadletters_replay_many
from jobs.models import DeadLetter
from tests.jobs.chores.models import Chore
from tests.jobs.chores.tasks import DO, make_dead_chore

pytestmark = pytest.mark.django_db
LIST_URL = "/admin/jobs/deadletter/"


def test_a_replay_runs_the_replayer_its_app_registered(django_capture_on_commit_callbacks):
    chore, letter = make_dead_chore()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert deadletter_replay(dead_letter=letter)
    assert Chore.objects.get(pk=chore.pk).status == "queued"
    assert len(callbacks) == 1
    assert not deadletter_replay(dead_letter=DeadLetter.objects.get(pk=letter.pk)), "replayed once, not twice"


def test_a_task_level_dead_letter_is_replayed_by_publishing_its_task_again(django_capture_on_commit_callbacks):
    chore = Chore.objects.create(owner="ada@example.com")
    letter = deadletter_record(
        job_name=DO,
        arguments={"args": [str(chore.pk)], "kwargs": {}},
        error=ValueError("the worker could not read its message"),
        attempts=1,
        queue="transactional.email",
    )

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        outcome = deadletters_replay_many(ids=[letter.pk])

    assert outcome.done == [letter.pk] and not outcome.failed
    assert len(callbacks) == 1, "its task is published again with the arguments it failed with"
    assert DeadLetter.objects.get(pk=letter.pk).status == "replayed"


def test_a_dead_letter_that_cannot_be_replayed_says_why_and_stays_open(admin_client):
    gone = deadletter_record(
        job_name="billing.sync_invoice", arguments={"args": [7]}, error="no such job any more", attempts=1
    )
    orphan_of, orphan = make_dead_chore()
    Chore.objects.filter(pk=orphan_of.pk).delete()

    response = admin_client.post(
        LIST_URL,
        {"action": "replay_selected", "_selected_action": [str(gone.pk), str(orphan.pk)], "index": "0"},
        follow=True,
    )

    assert response.status_code == 200
    text = " ".join(str(m) for m in response.context["messages"])
    assert "2 not replayable" in text and "billing.sync_invoice" in text and "no longer exists" in text
    assert set(DeadLetter.objects.filter(pk__in=[gone.pk, orphan.pk]).values_list("status", flat=True)) == {"open"}
    page = admin_client.get(f"{LIST_URL}{gone.pk}/change/")
    assert page.status_code == 200
    assert "no: no task named" in page.content.decode()

"""`manage.py deadletters list|replay|discard`: the dead-letter table for scripts."""

import datetime as dt
import io
import json

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.utils import timezone

from jobs.models import DeadLetter
from tests.jobs.chores.models import Chore
from tests.jobs.chores.tasks import make_dead_chore

pytestmark = pytest.mark.django_db


ADDRESSES = {"email": "ada@example.com", "sms": "+14155550199", "push": "fGzA1b2c3d4e5f6g7h8:APA91bHxToken"}


def dead_letter(
    *, channel: str = "sms", priority: str = "transactional", provider: str = "twilio"
) -> tuple[Chore, DeadLetter]:
    """A chore (a job that is not a notification) that died on `<priority>.<channel>` calling `provider`."""
    return make_dead_chore(queue=f"{priority}.{channel}", dependency=provider, owner=ADDRESSES[channel], attempts=0)


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("deadletters", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.fixture
def operator(django_user_model):
    user = django_user_model.objects.create_user(username="oncall", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="replay_deadletter"))
    return user


def test_list_prints_open_dead_letters_newest_first_with_masked_messages():
    sms_chore, sms = dead_letter(channel="sms")
    _, email = dead_letter(channel="email", priority="security", provider="postmark")

    lines = run("list").splitlines()

    assert lines[0].split() == [
        "id",
        "last",
        "failure",
        "queue",
        "dependency",
        "error",
        "class",
        "attempts",
        "status",
        "subject",
        "message",
    ]
    assert lines[1].split()[0] == str(email.pk)
    assert lines[1].split()[3:8] == ["security.email", "postmark", "PermanentError", "0", "open"]
    assert lines[2].split()[0] == str(sms.pk)
    assert str(sms_chore.pk) in lines[2]
    assert lines[2].endswith("invalid recipient +141******99")
    assert "ada@example.com" not in "\n".join(lines)
    assert lines[-1] == "2 of 2 matching dead letter(s) shown."


def test_list_filters_by_queue_facets_dependency_error_class_status_and_date():
    _, sms = dead_letter(channel="sms")
    _, email = dead_letter(channel="email", priority="security", provider="postmark")
    _, push = dead_letter(channel="push", priority="marketing", provider="fcm")
    run("replay", "--id", str(push.pk))
    DeadLetter.objects.filter(pk=sms.pk).update(last_failed_at=timezone.now() - dt.timedelta(days=3))

    def ids(*args: str) -> set[int]:
        return {json.loads(line)["id"] for line in run("list", "--json", *args).splitlines()}

    assert ids() == {sms.pk, email.pk}
    assert ids("--status", "all") == {sms.pk, email.pk, push.pk}
    assert ids("--status", "replayed") == {push.pk}
    assert ids("--channel", "sms") == {sms.pk}
    assert ids("--priority", "security") == {email.pk}
    assert ids("--dependency", "postmark") == {email.pk}
    assert ids("--error-class", "PermanentError") == {sms.pk, email.pk}
    assert ids("--error-class", "jobs.errors.TransientError") == set()
    today = timezone.localdate().isoformat()
    assert ids("--since", today) == {email.pk}
    assert ids("--until", (timezone.localdate() - dt.timedelta(days=1)).isoformat()) == {sms.pk}


def test_list_limit_says_how_many_more_match():
    for _ in range(3):
        dead_letter()
    assert run("list", "--limit", "2").splitlines()[-1] == "2 of 3 matching dead letter(s) shown."


def test_list_json_masks_personal_data_in_arguments_and_message():
    chore, letter = dead_letter(channel="email", provider="postmark")
    (row,) = [json.loads(line) for line in run("list", "--json").splitlines()]
    assert row["id"] == letter.pk
    assert row["arguments"] == {"args": [str(chore.pk)], "to": "a***@example.com", "template": "order_shipped"}
    assert row["message"] == "invalid recipient a***@example.com"
    assert (row["subject_type"], row["subject_id"], row["status"]) == (
        "chores.chore",
        str(chore.pk),
        "open",
    )


def test_replay_by_id_requeues_the_job_and_records_who(operator, django_capture_on_commit_callbacks):
    chore, letter = dead_letter()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        out = run("replay", "--id", str(letter.pk), "--user", "oncall")
    assert "Replayed 1 dead letter(s)." in out
    letter.refresh_from_db()
    assert (letter.status, letter.resolved_by) == ("replayed", operator)
    replayed = Chore.objects.get(pk=chore.pk)
    assert (replayed.status, replayed.attempts) == ("queued", 0)
    assert len(callbacks) == 1
    assert LogEntry.objects.get(object_id=str(letter.pk)).change_message == "Replayed"


def test_replay_reports_rows_that_are_not_open_or_do_not_exist():
    _, letter = dead_letter()
    run("replay", "--id", str(letter.pk))
    out = run("replay", "--id", str(letter.pk), "999999")
    assert "not open (skipped): " + str(letter.pk) in out
    assert "no such dead letter: 999999" in out
    assert "Replayed 0 dead letter(s); 1 skipped (not open); 1 not found." in out


def test_replay_all_matching_replays_only_what_the_filters_match():
    _, sms = dead_letter(channel="sms")
    _, email = dead_letter(channel="email", provider="postmark")
    assert "Replayed 1 dead letter(s)." in run("replay", "--all-matching", "--channel", "sms")
    assert DeadLetter.objects.get(pk=sms.pk).status == "replayed"
    assert DeadLetter.objects.get(pk=email.pk).status == "open"


def test_all_matching_without_a_filter_is_refused_unless_confirmed():
    dead_letter()
    dead_letter(channel="email", provider="postmark")
    with pytest.raises(CommandError, match=r"with no filter would replay every open dead letter \(2\).*--yes"):
        run("replay", "--all-matching")
    assert DeadLetter.objects.filter(status="open").count() == 2
    assert "Replayed 2 dead letter(s)." in run("replay", "--all-matching", "--yes")


def test_discard_by_id_keeps_the_reason_and_who(operator):
    chore, letter = dead_letter()
    out = run("discard", "--id", str(letter.pk), "--reason", "number ported away", "--user", "oncall")
    assert "Discarded 1 dead letter(s)." in out
    letter.refresh_from_db()
    assert (letter.status, letter.resolution_note, letter.resolved_by) == ("discarded", "number ported away", operator)
    assert LogEntry.objects.get(object_id=str(letter.pk)).change_message == "Discarded: number ported away"
    assert Chore.objects.get(pk=chore.pk).status == "dead"


def test_discard_all_matching_with_a_filter():
    _, sms = dead_letter(channel="sms")
    _, email = dead_letter(channel="email", provider="postmark")
    out = run("discard", "--all-matching", "--dependency", "postmark", "--reason", "old campaign")
    assert "Discarded 1 dead letter(s)." in out
    assert DeadLetter.objects.get(pk=email.pk).status == "discarded"
    assert DeadLetter.objects.get(pk=sms.pk).status == "open"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--status", "closed"], "unknown --status 'closed'; use one of open, replayed, discarded or all"),
        (["list", "--since", "26/11/2026"], "'26/11/2026' is not a date; use YYYY-MM-DD"),
        (["list", "--since", "2026-11-27", "--until", "2026-11-26"], "--since is after --until"),
        (["list", "--limit", "-1"], "--limit must be 0"),
        (["replay", "--id", "1", "--user", "nobody"], "unknown user 'nobody' for --user; give an existing username"),
        (["replay", "--id", "1", "--channel", "sms"], "--channel applies only with --all-matching"),
        (["replay"], "one of the arguments --id --all-matching is required"),
        (["discard", "--id", "1"], 'discard needs --reason "why these are not replayed"'),
        (["discard", "--id", "1", "--reason", "   "], "discard needs --reason"),
        (["discard", "--all-matching", "--reason", "x"], "with no filter would discard every open dead letter"),
    ],
)
def test_bad_input_is_refused_with_what_to_fix(args, message):
    _, letter = dead_letter()
    with pytest.raises(CommandError) as refused:
        run(*args)
    assert message in str(refused.value)
    letter.refresh_from_db()
    assert letter.status == "open"


def test_a_user_without_the_permission_is_refused(django_user_model):
    django_user_model.objects.create_user(username="intern", password="x", is_staff=True)
    _, letter = dead_letter()
    with pytest.raises(CommandError, match="user 'intern' lacks the jobs.replay_deadletter permission"):
        run("replay", "--id", str(letter.pk), "--user", "intern")
    assert DeadLetter.objects.get(pk=letter.pk).status == "open"


def test_a_replay_that_fails_leaves_the_row_open_and_exits_with_an_error():
    chore, letter = dead_letter()
    broken = DeadLetter.objects.create(
        job_name="no.such.task",
        arguments={"args": []},
        error_class="x.Boom",
        message="boom",
        first_failed_at=timezone.now(),
        last_failed_at=timezone.now(),
    )
    with pytest.raises(CommandError, match="1 replay"):
        run("replay", "--id", str(broken.pk), str(letter.pk))
    assert DeadLetter.objects.get(pk=broken.pk).status == "open"
    assert DeadLetter.objects.get(pk=letter.pk).status == "replayed"
    assert Chore.objects.get(pk=chore.pk).status == "queued"

"""`deadletters list|replay|discard`: the dead-letter table for scripts, with the admin's filters."""

import datetime as dt
import json
from argparse import ArgumentParser, ArgumentTypeError
from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.text import Truncator

from jobs.deadletters import BulkOutcome, deadletters_discard_many, deadletters_replay_many
from jobs.masking import mask_personal_data
from jobs.models import DeadLetter, DeadLetterStatus
from jobs.selectors import deadletters_matching, queue_facet_names

#: Options that narrow the set (besides the queue's facets); `--all-matching` with none of them means "every open
#: dead letter".
FILTERS = ("dependency", "error_class", "job_name", "since", "until")
MESSAGE_WIDTH = 60


class Command(BaseCommand):
    help = "List, replay or discard dead letters (failed jobs). Filters match the admin's."

    def add_arguments(self, parser: ArgumentParser) -> None:
        commands = parser.add_subparsers(dest="subcommand", required=True, metavar="{list,replay,discard}")

        listing = commands.add_parser("list", help="print dead letters, most recent failure first")
        listing.add_argument(
            "--status", default="open", help="open (default), replayed, discarded, or all for every status"
        )
        _add_filters(listing)
        listing.add_argument("--limit", type=int, default=50, help="rows to print (default 50; 0 for all)")
        listing.add_argument("--json", action="store_true", help="one JSON object per line, personal data masked")

        replay = commands.add_parser("replay", help="put open dead letters' jobs back to work")
        _add_selection(replay)

        discard = commands.add_parser("discard", help="close open dead letters without running them again")
        _add_selection(discard)
        discard.add_argument("--reason", default="", help="why they are not replayed (required; kept on each row)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["subcommand"] == "list":
            self._list(options)
        else:
            self._act(options)

    def _list(self, options: dict[str, Any]) -> None:
        status = options["status"]
        if status not in [*DeadLetterStatus.values, "all"]:
            raise CommandError(f"unknown --status {status!r}; use one of {', '.join(DeadLetterStatus.values)} or all")
        if options["limit"] < 0:
            raise CommandError("--limit must be 0 (no limit) or a positive number of rows")
        matching = _matching(options, status=None if status == "all" else status)
        total = matching.count()
        rows = list(matching.select_related("resolved_by", "subject_type")[: options["limit"] or None])
        if options["json"]:
            for row in rows:
                self.stdout.write(json.dumps(_as_json(row), ensure_ascii=False))
            return
        self._print_table(rows)
        self.stdout.write(f"{len(rows)} of {total} matching dead letter(s) shown.")

    def _print_table(self, rows: list[DeadLetter]) -> None:
        header = (
            "id",
            "last failure",
            "queue",
            "dependency",
            "error class",
            "attempts",
            "status",
            "subject",
            "message",
        )
        lines = [header] + [
            (
                str(row.pk),
                timezone.localtime(row.last_failed_at).strftime("%Y-%m-%d %H:%M:%S"),
                row.queue or "-",
                row.dependency or "-",
                row.error_class.rsplit(".", 1)[-1],
                str(row.attempts),
                row.status,
                row.subject_id or "-",
                Truncator(" ".join(mask_personal_data(row.message).split())).chars(MESSAGE_WIDTH),
            )
            for row in rows
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
        for line in lines:
            cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)] + [line[-1]]
            self.stdout.write("  ".join(cells).rstrip())

    def _act(self, options: dict[str, Any]) -> None:
        action = options["subcommand"]
        reason = options.get("reason", "").strip()
        if action == "discard" and not reason:
            raise CommandError('discard needs --reason "why these are not replayed"; it is kept on each dead letter')
        user = _user(options["user"])
        given_filters = [name for name in _filters() if options[name] is not None]
        if options["id"]:
            if given_filters:
                raise CommandError(
                    f"--{given_filters[0].replace('_', '-')} applies only with --all-matching; "
                    "with --id, the ids alone say which rows"
                )
            ids = options["id"]
        else:
            matching = _matching(options, status=DeadLetterStatus.OPEN)
            if not given_filters and not options["yes"]:
                raise CommandError(
                    f"--all-matching with no filter would {action} every open dead letter ({matching.count()}); "
                    f"narrow it with {', '.join('--' + name.replace('_', '-') for name in _filters())}, "
                    "or add --yes to confirm"
                )
            ids = list(matching.values_list("pk", flat=True))
        if action == "replay":
            outcome = deadletters_replay_many(ids=ids, user=user)
            self._report(outcome, "Replayed")
        else:
            outcome = deadletters_discard_many(ids=ids, reason=reason, user=user)
            self._report(outcome, "Discarded")

    def _report(self, outcome: BulkOutcome, verb: str) -> None:
        if outcome.not_open:
            self.stdout.write(f"not open (skipped): {', '.join(map(str, outcome.not_open))}")
        if outcome.missing:
            self.stdout.write(f"no such dead letter: {', '.join(map(str, outcome.missing))}")
        for pk, error in outcome.failed.items():
            self.stderr.write(f"dead letter {pk}: replay failed: {error}")
        for pk, why in outcome.not_replayable.items():
            self.stderr.write(f"dead letter {pk}: cannot be replayed: {why}")
        self.stdout.write(outcome.summary(verb))
        undone = len(outcome.failed) + len(outcome.not_replayable)
        if undone:
            raise CommandError(
                f"{undone} replay(s) not done and still open; see above (discard what cannot be replayed "
                "with `deadletters discard --id … --reason …`)"
            )


def _filters() -> tuple[str, ...]:
    return (*reversed(queue_facet_names()), *FILTERS)


def _add_filters(parser: ArgumentParser) -> None:
    names = queue_facet_names()
    for index, name in reversed(list(enumerate(names))):
        parser.add_argument(f"--{name}", help=f"the {name} (part {index + 1} of the queue's name, {'.'.join(names)})")
    parser.add_argument("--dependency", help="the outside service whose call failed, e.g. a provider account: twilio")
    parser.add_argument("--error-class", help="full dotted name or just the class name, e.g. PermanentError")
    parser.add_argument("--job-name", help="task name, e.g. an app's task name")
    parser.add_argument("--since", type=_date("--since"), help="YYYY-MM-DD: last failure on or after that day")
    parser.add_argument("--until", type=_date("--until"), help="YYYY-MM-DD: last failure on or before that day")


def _add_selection(parser: ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, nargs="+", action="extend", metavar="N", help="dead-letter ids")
    which.add_argument("--all-matching", action="store_true", help="every open dead letter the filters match")
    _add_filters(parser)
    parser.add_argument("--yes", action="store_true", help="confirm --all-matching without any filter")
    parser.add_argument("--user", help="username recorded as the one who acted (needs jobs.replay_deadletter)")


def _date(option: str) -> Callable[[str], dt.date]:
    def parse(value: str) -> dt.date:
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            # argparse turns this into a CommandError, or a usage message on the command line.
            raise ArgumentTypeError(f"{value!r} is not a date; use YYYY-MM-DD, e.g. 2026-11-26") from None

    return parse


def _matching(options: dict[str, Any], *, status: str | None) -> QuerySet[DeadLetter]:
    if options["since"] and options["until"] and options["since"] > options["until"]:
        raise CommandError("--since is after --until; swap them")
    return deadletters_matching(status=status, **{name: options[name] for name in _filters()})


def _user(username: str | None):
    if username is None:
        return None
    model = get_user_model()
    user = model.objects.filter(**{model.USERNAME_FIELD: username}).first()
    if user is None:
        raise CommandError(f"unknown user {username!r} for --user; give an existing username, or leave --user out")
    if not user.has_perm("jobs.replay_deadletter"):
        raise CommandError(
            f"user {username!r} lacks the jobs.replay_deadletter permission; grant it in the admin or use another --user"
        )
    return user


def _as_json(row: DeadLetter) -> dict[str, Any]:
    subject_type = f"{row.subject_type.app_label}.{row.subject_type.model}" if row.subject_type else None
    return {
        "id": row.pk,
        "job_name": row.job_name,
        "queue": row.queue,
        "dependency": row.dependency,
        "error_class": row.error_class,
        "message": mask_personal_data(row.message),
        "arguments": mask_personal_data(row.arguments),
        "attempts": row.attempts,
        "status": row.status,
        "subject_type": subject_type,
        "subject_id": row.subject_id or None,
        "first_failed_at": row.first_failed_at.isoformat(),
        "last_failed_at": row.last_failed_at.isoformat(),
        "resolved_by": row.resolved_by.get_username() if row.resolved_by else None,
        "resolved_at": row.resolved_at.isoformat() if row.resolved_at else None,
        "resolution_note": row.resolution_note,
    }

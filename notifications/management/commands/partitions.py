"""`partitions [--since DAY]`: list the notifications' partitions (notifications/partitions.py), after making the
weeks from DAY (default: this week) to PARTITIONS_AHEAD_WEEKS ahead."""

from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError

from jobs.partitions import leaves, rows_estimate
from notifications.partitions import EVENTS, NOTIFICATIONS, partitions_ensure, weeks_missing


class Command(BaseCommand):
    help = "Make the notifications' weekly partitions (from --since to PARTITIONS_AHEAD_WEEKS ahead) and list them."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--since", default=None, help="first week to make, as a day YYYY-MM-DD (default: this week)"
        )

    def handle(self, *args, since: str | None, **options) -> None:
        start = None
        if since is not None:
            try:
                start = datetime.strptime(since, "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError:
                raise CommandError(f"--since must be a day as YYYY-MM-DD, not {since!r}") from None
        for suffix in partitions_ensure(since=start):
            self.stdout.write(f"added {suffix}")
        missing = [leaf.suffix for leaf in weeks_missing(since=start)]
        if missing:
            raise CommandError(
                f"could not add {', '.join(missing)} (their locks were held too long; see the log): run it again"
            )
        for table in (NOTIFICATIONS, EVENTS):
            self.stdout.write(f"{table.name}:")
            for leaf in leaves(table):
                name = table.leaf(leaf.suffix)
                self.stdout.write(f"  {name:48} about {rows_estimate(name):>12,} rows  [{leaf.low}, {leaf.high})")
            self.stdout.write(f"  {table.default:48} about {rows_estimate(table.default):>12,} rows  (default)")

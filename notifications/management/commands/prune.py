"""`prune [--dry-run]`: delete what is past its keeping time now (settings.RETENTION_DAYS), or show what would go."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from notifications.retention import retention_prune


class Command(BaseCommand):
    help = "Delete notifications, events, dead letters and jobs past their keeping time (RETENTION_DAYS)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")
        parser.add_argument("--max-seconds", type=float, default=None, help="stop after this long (default: done)")
        parser.add_argument(
            "--batch", type=int, default=None, help=f"rows per delete (default {settings.RETENTION_BATCH_SIZE})"
        )

    def handle(self, *args, dry_run: bool, max_seconds: float | None, batch: int | None, **options) -> None:
        if max_seconds is not None and max_seconds <= 0:
            raise CommandError("--max-seconds must be positive (or left out to prune everything due)")
        if batch is not None and not 1 <= batch <= 100_000:
            raise CommandError("--batch must be between 1 and 100000 rows (short transactions keep sends going)")
        results = retention_prune(dry_run=dry_run, max_seconds=max_seconds, batch=batch)
        if results is None:
            raise CommandError("another prune is running (it holds the pruner's lock); try again when it is done")
        verb = "would delete" if dry_run else "deleted"
        for result in results:
            line = f"{result.name:32} older than {result.cutoff:%Y-%m-%d %H:%M} UTC: {verb} {result.rows:,}"
            if not dry_run:
                line += f" in {result.seconds:.1f}s" + ("" if result.done else " (time up: more left)")
            self.stdout.write(line)

"""`make chaos`: run the fault drills on one isolated ChaosStack, print the table, write bench-results/chaos.json.

Exits non-zero when any drill lost or duplicated a notification or failed its own checks.
"""

import json
import os
import platform
import random
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from harness.chaos.catalogue import DRILLS, run_drill
from harness.chaos.drills import FULL, QUICK
from harness.chaos.stack import ChaosStack
from notifications.providers.registry import provider_lookups

RESULTS = Path(settings.BASE_DIR) / "bench-results"
COLUMNS = (
    ("drill", "drill", 42),
    ("submitted", "submitted", 9),
    ("sent", "sent", 5),
    ("dead", "dead", 5),
    ("lost", "lost", 5),
    ("duplicates", "duplicates", 10),
    ("recovery_seconds", "recovery s", 10),
    ("replays", "resends", 16),
    ("ok", "ok", 4),
)


def format_table(rows: list[dict]) -> str:
    """A Markdown table (it reads as well in a terminal as in the README)."""

    def cell(row: dict, key: str) -> str:
        value = row.get(key)
        if key == "ok":
            return "yes" if value else "NO"
        if key == "replays":
            return ", ".join(f"{vendor} {count}" for vendor, count in sorted((value or {}).items())) or "0"
        return "–" if value is None else str(value)

    lines = [
        "| " + " | ".join(title.ljust(width) for _, title, width in COLUMNS) + " |",
        "|" + "|".join("-" * (width + 2) for _, _, width in COLUMNS) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(cell(row, key).ljust(width) for key, _, width in COLUMNS) + " |")
    return "\n".join(lines)


def format_resends(rows: list[dict]) -> str:
    """Resends per provider over every drill (a key sent again to a provider that already had it), for every
    configured provider, and whether its vendor is looked up before a resend."""
    lookups = provider_lookups()
    totals = dict.fromkeys(lookups, 0)
    for row in rows:
        for provider, count in (row.get("replays") or {}).items():
            totals[provider] = totals.get(provider, 0) + count
    lines = ["| vendor | lookup before a resend | resends |", "|---|---|---|"]
    for provider, count in totals.items():
        lines.append(f"| {provider} | {'yes' if lookups.get(provider) else 'no'} | {count} |")
    return "\n".join(lines)


class Command(BaseCommand):
    help = "Run the fault drills against an isolated copy of the platform; print a table and write JSON."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--drill",
            type=int,
            action="append",
            choices=sorted(DRILLS),
            help="run only this drill (repeat for several); default: all",
        )
        parser.add_argument(
            "--quick",
            action="store_true",
            help="smaller bursts and campaigns, fewer repetitions, shorter faults (what `make test` runs)",
        )
        parser.add_argument("--seed", type=int, help="seed of the random kill moments and victims")
        parser.add_argument("--output", default=str(RESULTS / "chaos.json"))
        parser.add_argument("--keep-data", action="store_true", help="keep the isolated PostgreSQL data folder")

    def handle(self, *args, drill, quick, seed, output, keep_data, **options) -> None:
        numbers = drill or sorted(DRILLS)
        plan = QUICK if quick else FULL
        seed = seed if seed is not None else random.randrange(1 << 30)
        rng = random.Random(seed)
        started = time.monotonic()
        stack = ChaosStack(keep_data=keep_data)
        self.stdout.write(f"chaos: drills {numbers}, seed {seed}, logs in {stack.run_dir}")
        rows = []
        with stack:
            self.stdout.write(f"stack up in {time.monotonic() - started:.0f}s")
            for number in numbers:
                row = run_drill(stack, number, plan, rng)
                rows.append(row)
                self.stdout.write(
                    f"{row['drill']}: {'ok' if row['ok'] else 'FAILED'} in {row['seconds']}s; {row['notes']}"
                )
            unmasked = stack.unmasked_personal_data()
        seconds = time.monotonic() - started
        self.stdout.write("\n" + format_table(rows) + "\n\n" + format_resends(rows) + "\n")
        self.stdout.write(f"{len(rows)} drill(s) in {seconds:.0f}s; logs in {stack.run_dir}")
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(
            json.dumps(
                {
                    "plan": "quick" if quick else "full",
                    "seed": seed,
                    "seconds": round(seconds, 1),
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                    "settings": stack.settings,
                    "logs": str(stack.run_dir),
                    "drills": rows,
                },
                indent=2,
                default=str,
            )
        )
        self.stdout.write(f"log lines with an address or phone number in clear: {len(unmasked)}")
        for line in unmasked[:20]:
            self.stdout.write(f"  {line}")
        failed = [row["drill"] for row in rows if not row["ok"]]
        if unmasked:
            failed.append("personal data in clear in the logs")
        if failed:
            raise CommandError(f"{len(failed)} drill(s) failed: {', '.join(failed)}; logs in {stack.run_dir}")

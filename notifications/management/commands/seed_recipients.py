"""`seed_recipients N`: load N synthetic recipients through COPY, for demos and benchmarks.

Rows are generated as COPY text in large chunks and streamed in batches, so memory stays
flat whatever N is; every index stays in place, the load pays for them as production would.
"""

import random
import re
import time

from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.utils import timezone

from notifications.models import Recipient

#: NANP reserves 555 for fiction; "+1555" plus 11 digits is exactly 15, the E.164 maximum.
PHONE_PREFIX = "+1555"
PHONE_DIGITS = 11
MAX_INDEX = 10**PHONE_DIGITS
TIME_ZONES = (
    "UTC",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Paris",
    "Europe/Madrid",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Australia/Sydney",
)
TOPICS = ("news", "offers", "product", "events", "vip")
#: Rows draw their non-unique columns from this many pre-generated tails, so the hot
#: loop makes one random call per chunk instead of six per row.
TAIL_POOL = 65_536
#: Rows per copy.write(): big enough that string joins dominate, small enough (~8 MB) to keep memory flat.
CHUNK_ROWS = 50_000
#: Only characters that need no quoting in COPY text or in an array literal.
SAFE_LABEL = re.compile(r"^[A-Za-z0-9_.:-]+$")
#: One seeding run at a time: each run numbers its rows after the highest seeded phone.
LOCK_KEY = 0x5EED_0001
COLUMNS = (
    "email",
    "phone",
    "locale",
    "timezone",
    "email_marketing_consent",
    "sms_marketing_consent",
    "push_marketing_consent",
    "tags",
    "created_at",
)


def positive_int(value: str, *, what: str = "recipients", example: str = "5000000") -> int:
    try:
        number = int(value.replace("_", "").replace(",", ""))
    except ValueError:
        number = 0
    if number < 1:
        raise CommandError(f"N must be a whole number of {what}, at least 1 (e.g. {example}), not {value!r}")
    return number


def build_tails(*, rng: random.Random, locales: list[str], consent_share: float, tag_prefix: str) -> list[str]:
    """COPY text for every column after the phone, one random row each."""
    created_at = timezone.now().isoformat()
    tails = []
    for _ in range(TAIL_POOL):
        consents = "\t".join("t" if rng.random() < consent_share else "f" for _ in range(3))
        topics = rng.sample(TOPICS, rng.choice((1, 2)))
        tags = ",".join(f"{tag_prefix}-{topic}" for topic in topics)
        tails.append(f"{rng.choice(locales)}\t{rng.choice(TIME_ZONES)}\t{consents}\t{{{tags}}}\t{created_at}\n")
    return tails


def rows_text(run: int, start: int, stop: int, tails: list[str]) -> str:
    """COPY text for recipients start..stop-1; their running number makes e-mail and phone unique."""
    email = f"seed-{run}-"
    return "".join(
        [
            f"{email}{i}@example.com\t{PHONE_PREFIX}{i:0{PHONE_DIGITS}d}\t{tail}"
            for i, tail in zip(range(start, stop), tails, strict=True)
        ]
    )


class Command(BaseCommand):
    help = "Load N synthetic recipients (unique e-mails and E.164 phones, consent, tags) quickly with COPY."

    def add_arguments(self, parser) -> None:
        parser.add_argument("count", metavar="N", help="how many recipients to add, e.g. 5000000")
        parser.add_argument("--batch", type=int, default=500_000, help="rows per COPY statement (default 500000)")
        parser.add_argument(
            "--consent-share",
            type=float,
            default=0.9,
            help="share of recipients with marketing consent, per channel (default 0.9)",
        )
        parser.add_argument("--locales", default="en,de,fr,es", help="comma-separated locales (default en,de,fr,es)")
        parser.add_argument("--tag-prefix", default="seed", help="tags are <prefix>-<topic> (default seed)")

    def handle(
        self,
        *args,
        count: str,
        batch: int,
        consent_share: float,
        locales: str,
        tag_prefix: str,
        **options,
    ) -> None:
        total = positive_int(count)
        if batch < 1:
            raise CommandError("--batch must be at least 1 (default 500000)")
        if not 0.0 <= consent_share <= 1.0:
            raise CommandError("--consent-share must be between 0 and 1, e.g. 0.9")
        locale_list = [locale.strip() for locale in locales.split(",") if locale.strip()]
        if not locale_list or not all(SAFE_LABEL.match(locale) and len(locale) <= 16 for locale in locale_list):
            raise CommandError("--locales must be comma-separated codes of letters, digits, - or _, e.g. en,de,fr")
        longest_tag = len(tag_prefix) + 1 + max(map(len, TOPICS))
        if not SAFE_LABEL.match(tag_prefix) or longest_tag > 50:
            raise CommandError("--tag-prefix must be up to 42 letters, digits, '-', '_', '.' or ':', e.g. seed")

        rng = random.Random()
        tails = build_tails(rng=rng, locales=locale_list, consent_share=consent_share, tag_prefix=tag_prefix)
        run = int(time.time())
        sql = f"COPY {Recipient._meta.db_table} ({', '.join(COLUMNS)}) FROM STDIN"

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
            try:
                first = self._next_index(cursor)
                if first + total > MAX_INDEX:
                    raise CommandError(f"only {MAX_INDEX - first:,} more seeded phone numbers are left")
                started = time.monotonic()
                done = 0
                while done < total:
                    # One COPY per batch: each commits on its own, and progress shows between them.
                    low, high = first + done, first + min(done + batch, total)
                    with cursor.copy(sql) as copy:
                        for chunk in range(low, high, CHUNK_ROWS):
                            stop = min(chunk + CHUNK_ROWS, high)
                            copy.write(rows_text(run, chunk, stop, rng.choices(tails, k=stop - chunk)))
                    done = high - first
                    elapsed = time.monotonic() - started
                    self.stdout.write(
                        f"{done:>12,} / {total:,} rows  {elapsed:6.1f} s  {done / elapsed:>10,.0f} rows/s"
                    )
            finally:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])

        elapsed = time.monotonic() - started
        self.stdout.write(
            self.style.SUCCESS(
                f"seeded {total:,} recipients (run {run}) in {elapsed:.1f} s: {total / elapsed:,.0f} rows/s"
            )
        )

    @staticmethod
    def _next_index(cursor) -> int:
        """One past the highest seeded phone, so runs never collide."""
        # A range (not LIKE) lets PostgreSQL read the unique index backwards and stop at
        # the first row: 0.1 ms instead of seconds at 5M rows. Seeded phones all have the
        # same length, so within it string order is numeric order.
        # Bandit B608 (SQL built from strings): the table name is the model's own; values are parameters.
        table = Recipient._meta.db_table
        cursor.execute(
            f"SELECT phone FROM {table} WHERE phone >= %s AND phone < %s AND length(phone) = %s ORDER BY phone DESC LIMIT 1",  # nosec B608
            [PHONE_PREFIX, PHONE_PREFIX[:-1] + chr(ord(PHONE_PREFIX[-1]) + 1), len(PHONE_PREFIX) + PHONE_DIGITS],
        )
        row = cursor.fetchone()
        return int(row[0][len(PHONE_PREFIX) :]) + 1 if row else 0

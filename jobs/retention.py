"""Retention: delete what is past its keeping time in small batches, each its own short transaction, paced so live
work keeps the database; the rules of the runtime's own tables (finished jobs, dead letters) live here, a domain
adds its own (`Rule`).

    rule ........ a name, a cutoff, how to count what it would delete (dry run) and how to delete one batch
    prune ....... every rule in turn, batch after batch, pausing after each (RETENTION_PAUSE_RATIO x its time),
                  until nothing is left or the time is up; one pruner at a time (an advisory lock)
"""

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

logger = logging.getLogger(__name__)

#: pg_try_advisory_lock key of the pruner (any constant no other lock of the platform uses).
PRUNE_LOCK = 0x6E6F746966790001


@dataclass
class Rule:
    """What one kind of row keeps: rows older than `cutoff` go, `delete_batch(cutoff, size)` deleting up to `size`
    of them and returning how many (0 when none is left); `count(cutoff)` says how many would go."""

    name: str
    keep: timedelta
    delete_batch: Callable[[datetime, int], int]
    count: Callable[[datetime], int]
    #: Each batch in a transaction of its own; False for one that commits as it goes (a partition's drop).
    atomic: bool = True

    def cutoff(self, now: datetime) -> datetime:
        return now - self.keep


@dataclass
class Pruned:
    name: str
    cutoff: datetime
    rows: int
    seconds: float
    done: bool


def retention_days(kind: str) -> timedelta:
    """How long `kind` is kept (a key of settings.RETENTION_DAYS)."""
    return timedelta(days=settings.RETENTION_DAYS[kind])


def prune(
    rules: Iterable[Rule], *, dry_run: bool = False, max_seconds: float | None = None, batch: int | None = None
) -> list[Pruned] | None:
    """Apply `rules` in turn; what each deleted (or, with `dry_run`, would delete).  None when another pruner
    holds the lock.  With `max_seconds`, stops when the time is up (`done` False for the rules not finished)."""
    size = batch or settings.RETENTION_BATCH_SIZE
    now = timezone.now()
    deadline = time.monotonic() + max_seconds if max_seconds is not None else None
    if dry_run:
        return [Pruned(rule.name, rule.cutoff(now), rule.count(rule.cutoff(now)), 0.0, False) for rule in rules]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [PRUNE_LOCK])
        if not cursor.fetchone()[0]:
            return None
    try:
        return [_apply(rule, rule.cutoff(now), size, deadline) for rule in rules]
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [PRUNE_LOCK])


def _apply(rule: Rule, cutoff: datetime, size: int, deadline: float | None) -> Pruned:
    started = time.monotonic()
    rows, done = 0, False
    while deadline is None or time.monotonic() < deadline:
        began = time.monotonic()
        with transaction.atomic() if rule.atomic else nullcontext():
            deleted = rule.delete_batch(cutoff, size)
        rows += deleted
        if deleted == 0:
            done = True
            break
        # Room for live work: the pruner is busy at most 1 / (1 + ratio) of the time.
        time.sleep((time.monotonic() - began) * settings.RETENTION_PAUSE_RATIO)
    seconds = time.monotonic() - started
    if rows:
        logger.info("retention: %s rows of %s older than %s deleted in %.1fs", rows, rule.name, cutoff, seconds)
    return Pruned(rule.name, cutoff, rows, round(seconds, 1), done)


def walk_by_id(table: str, *, time_column: str, condition: str) -> tuple[Callable, Callable]:
    """(delete_batch, count) for a table whose ids grow with time: each batch walks the next `size` ids from the
    lowest, deleting those older than the cutoff that meet `condition` (SQL on the table's own columns, from the
    code), and the walk ends where the ids are newer than the cutoff.  No index on the time column needed."""
    # Bandit B608 (SQL built from strings): the table, column and condition are constants of the code.
    window = f"SELECT id, {time_column} AS at FROM {table} WHERE id > %(after)s ORDER BY id LIMIT %(size)s"  # nosec B608
    delete_sql = f"""
        WITH walked AS MATERIALIZED ({window}),
        gone AS (
            DELETE FROM {table} t USING walked w
            WHERE t.id = w.id AND w.at < %(cutoff)s AND ({condition})
            RETURNING t.id
        )
        SELECT (SELECT max(id) FROM walked), (SELECT min(at) FROM walked), (SELECT count(*) FROM gone)
    """  # nosec B608
    count_sql = f"SELECT count(*) FROM {table} t WHERE t.{time_column} < %s AND ({condition})"  # nosec B608
    state = {"after": 0}

    def delete_batch(cutoff: datetime, size: int) -> int:
        deleted = 0
        # Past a stretch of rows to keep (not yet final, say) without stopping: ids keep going up.
        while True:
            with connection.cursor() as cursor:
                cursor.execute(delete_sql, {"after": state["after"], "size": size, "cutoff": cutoff})
                last, oldest, gone = cursor.fetchone()
            if last is None or oldest >= cutoff:
                state["after"] = 0
                return deleted
            state["after"] = last
            deleted += gone
            if deleted:
                return deleted

    def count(cutoff: datetime) -> int:
        with connection.cursor() as cursor:
            cursor.execute(count_sql, [cutoff])
            return cursor.fetchone()[0]

    return delete_batch, count


def runtime_rules() -> list[Rule]:
    """The job runtime's own tables: finished durable jobs and dead letters."""
    jobs_delete, jobs_count = walk_by_id(
        "jobs_job", time_column="created_at", condition="t.status IN ('succeeded', 'cancelled')"
    )
    letters_delete, letters_count = walk_by_id("jobs_deadletter", time_column="created_at", condition="true")
    return [
        Rule("finished jobs", retention_days("jobs"), jobs_delete, jobs_count),
        Rule("dead letters", retention_days("dead_letters"), letters_delete, letters_count),
    ]

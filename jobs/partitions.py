"""Tables cut into ranges of one key (PostgreSQL declarative partitioning by RANGE), so that retention drops a leaf
instead of deleting its rows one by one.  The runtime adds and removes leaves; a domain says which ranges exist and
when one may go.

    family ...... tables cut by the same ranges, with a leaf of each per range (a parent and its children's rows)
    leaf ........ one range [low, high) of a family, a table named <table>_<suffix> in each table of it
    default ..... each table's leaf for rows of no range: those from before the partitioning, those kept after
                  their range went (not final yet, say), and those whose key is NULL

Adding a leaf moves the rows of its range that waited in the default leaf into it, then attaches it.  Removing one
detaches it, moves the rows the domain keeps back to the default leaf, and drops it, all in one transaction:
no reader ever sees a kept row missing.  Both wait at most PARTITION_LOCK_TIMEOUT for their locks (a leaf is
attached and detached under a lock that queues the table's other statements behind it), and a caller tries again
later.
"""

import logging
import re
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Table:
    #: The partitioned (parent) table.
    name: str
    #: The column its ranges cut.
    key: str
    #: A column each leaf makes its own primary key, when the parent cannot have one (its key is not part of it).
    leaf_primary_key: str | None = None

    @property
    def default(self) -> str:
        return f"{self.name}_default"

    def leaf(self, suffix: str) -> str:
        return f"{self.name}_{suffix}"


@dataclass(frozen=True)
class Leaf:
    suffix: str
    low: str
    high: str


_BOUND = re.compile(r"FOR VALUES FROM \('([^']*)'\) TO \('([^']*)'\)")
#: The suffix of a leaf's name: a letter and digits (notifications/partitions.py: w20261207, c0000000042).
_BOUND_SUFFIX = re.compile(r"[a-z]\d+")


def leaves(table: Table) -> list[Leaf]:
    """`table`'s leaves but the default, lowest range first, read from the catalogue."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            [table.name],
        )
        found = []
        for name, bound in cursor.fetchall():
            match = _BOUND.fullmatch(bound)
            if match is None:  # the default leaf
                continue
            found.append(Leaf(name.removeprefix(f"{table.name}_"), match.group(1), match.group(2)))
    return sorted(found, key=lambda leaf: leaf.low)


#: Below this many rows by the statistics (or with none yet), a leaf's rows are counted: exact and still cheap.
COUNT_BELOW = 100_000


def rows_estimate(relation: str) -> int:
    """How many rows `relation` holds: by the planner's statistics for a big one (counting millions takes seconds),
    counted for a small one or one never analysed."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [relation])
        row = cursor.fetchone()
        if row is None:
            return 0
        if row[0] >= COUNT_BELOW:
            return int(row[0])
        # Bandit B608: a relation name of the catalogue, no value from outside.
        cursor.execute(f"SELECT count(*) FROM {relation}")  # nosec B608
        return cursor.fetchone()[0]


def _lock_timeout(cursor) -> None:
    cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{int(settings.PARTITION_LOCK_TIMEOUT * 1000)}ms"])


def leaf_add(family: list[Table], leaf: Leaf) -> int:
    """Add `leaf` to every table of `family` that lacks it; how many rows of the first table it took over from the
    default leaf.
    Raises OperationalError when a lock was not had in time (nothing changed then)."""
    moved = 0
    with transaction.atomic(), connection.cursor() as cursor:
        _lock_timeout(cursor)
        for table in family:
            name = table.leaf(leaf.suffix)
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
            if cursor.fetchone()[0]:
                continue
            # Bandit B608 (SQL built from strings): table and column names are the code's own; bounds are parameters.
            cursor.execute(f"CREATE TABLE {name} (LIKE {table.name} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
            if table.leaf_primary_key:
                cursor.execute(f"ALTER TABLE {name} ADD PRIMARY KEY ({table.leaf_primary_key})")
            in_range = f"{table.key} >= %(low)s AND {table.key} < %(high)s"
            bounds = {"low": leaf.low, "high": leaf.high}
            cursor.execute(f"INSERT INTO {name} SELECT * FROM {table.default} WHERE {in_range}", bounds)  # nosec B608
            if table is family[0]:
                moved = cursor.rowcount
            cursor.execute(f"DELETE FROM {table.default} WHERE {in_range}", bounds)  # nosec B608
            cursor.execute(
                f"ALTER TABLE {table.name} ATTACH PARTITION {name} FOR VALUES FROM (%(low)s) TO (%(high)s)", bounds
            )
    logger.info("partition %s added (%s row(s) moved in from the default leaves)", leaf.suffix, moved)
    return moved


def leftovers_drop(family: list[Table]) -> list[str]:
    """Drop the leaves of `family` a removal detached but did not get to drop (its process died in between)."""
    dropped = []
    with connection.cursor() as cursor:
        for table in family:
            cursor.execute(
                "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r' AND c.relname LIKE %s AND c.relname <> %s "
                "AND c.relnamespace = current_schema()::regnamespace AND NOT c.relispartition",
                [f"{table.name}\\_%", table.default],
            )
            for (name,) in cursor.fetchall():
                if _BOUND_SUFFIX.fullmatch(name.removeprefix(f"{table.name}_")):
                    cursor.execute(f"DROP TABLE IF EXISTS {name}")
                    dropped.append(name)
    return dropped


def leaf_remove(family: list[Table], leaf: Leaf, *, keep: dict[str, tuple[str, ...]]) -> tuple[int, int]:
    """Remove `leaf` from `family`: detach it from every table, move the rows `keep` names (disjoint conditions per
    table name, SQL on the leaf aliased `t`; `{<table>}` stands for that table's leaf) into the default leaves, drop
    it.  Returns (rows of the first table dropped, by the statistics when they are many; rows of it kept).  Raises
    OperationalError when a lock was not had in time (nothing changed then).  Not inside a transaction: the lock
    that detaches goes with the commit, before the drop."""
    names = {table.name: table.leaf(leaf.suffix) for table in family}
    dropped = kept = 0
    with transaction.atomic(), connection.cursor() as cursor:
        _lock_timeout(cursor)
        present = []
        for table in family:
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [names[table.name]])
            if cursor.fetchone()[0]:
                present.append(table)
                cursor.execute(f"ALTER TABLE {table.name} DETACH PARTITION {names[table.name]}")
        for table in present:
            name = names[table.name]
            if table is present[0]:
                dropped = rows_estimate(name)
            for condition in keep.get(table.name, ()):
                # Into the default leaf itself: through the parent, its statement triggers would fire again
                # (an event handed to the webhooks twice).
                cursor.execute(
                    f"INSERT INTO {table.default} SELECT * FROM {name} t WHERE {condition.format(**names)}"  # nosec B608
                )
                if table is present[0]:
                    kept += cursor.rowcount
    # After the commit, holding no lock of the tables: unlinking a leaf of millions of rows takes a while.  Should
    # this process die first, the next removal drops what was left detached.
    leftovers_drop(family)
    logger.info(
        "partition %s dropped (about %s row(s)); %s row(s) kept in the default leaves", leaf.suffix, dropped, kept
    )
    return dropped - kept, kept

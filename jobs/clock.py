"""The one clock job state is compared on: PostgreSQL's.

Worker hosts' clocks drift apart; a lease or a due time written by one and compared by another
would hand a row to two workers.  So leases, due times and claims use the database's time in SQL
(`statement_timestamp()`, Django's Now()), and code that needs that time in Python asks here.
"""

from datetime import datetime

from django.db import connection


def database_now() -> datetime:
    """PostgreSQL's current time (one round trip): for decisions a periodic job makes in Python."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement_timestamp()")
        return cursor.fetchone()[0]

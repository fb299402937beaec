"""When to try a failed job again, and when to give up.

Decision: waits live in PostgreSQL, not in the broker.  A failed attempt stores
`next_attempt_at` on its row and a periodic relay republishes rows that are due.  A
Celery countdown would sit in Redis's unacked set, and any wait longer than the
visibility timeout is redelivered (a duplicate send); a row in PostgreSQL cannot be.
Attempts are counted in PostgreSQL too, so a message that kills its worker (and is
therefore never acknowledged) still ends in the dead-letter table after the maximum.

Backoff is exponential with full jitter (delay = uniform(0, min(cap, base * 2**n)))
so a fleet of retries does not hammer a recovering provider in waves, and never
shorter than the provider's Retry-After.
"""

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings


@dataclass(frozen=True)
class RetryPolicy:
    #: Attempts in all, the first included; after the last, the job is dead-lettered.
    max_attempts: int
    #: Backoff base and cap, seconds.
    base_delay: float
    max_delay: float
    #: Seconds after creation past which no retry is scheduled (the job's useful life).
    budget_seconds: float

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(0, attempt - 1)))
        delay = (rng or random).uniform(0, ceiling)
        return max(delay, retry_after or 0.0)

    def next_attempt_at(
        self, *, attempt: int, created_at: datetime, now: datetime, retry_after: float | None = None
    ) -> datetime | None:
        """When to try again, or None when the attempts or the time budget are used up."""
        if attempt >= self.max_attempts:
            return None
        moment = now + timedelta(seconds=self.delay(attempt, retry_after))
        if moment > created_at + timedelta(seconds=self.budget_seconds):
            return None
        return moment


def retry_policy(name: str) -> RetryPolicy:
    """The policy named in settings.JOBS_RETRY_POLICIES (one per priority class, and any a job names)."""
    return RetryPolicy(**settings.JOBS_RETRY_POLICIES[name])

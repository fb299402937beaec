"""Every fault drill by number, and how one is run on a clean slate."""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable

from harness.chaos import composed, drills
from harness.chaos.drills import DrillRow, Plan
from harness.chaos.stack import ChaosStack

DRILLS: dict[int, Callable[[ChaosStack, Plan, random.Random], DrillRow]] = {
    1: drills.drill_sigkill,
    2: drills.drill_sigterm,
    3: drills.drill_redis_restart,
    4: drills.drill_postgres_stop,
    5: drills.drill_provider_outage,
    6: drills.drill_half_errors,
    7: drills.drill_retry_after,
    8: drills.drill_poison,
    9: drills.drill_idempotency,
    10: drills.drill_redis_down_at_submit,
    # Faults composed with campaigns, retries, replays and the relay.
    11: composed.drill_campaign_provider_errors,
    12: composed.drill_campaign_sigkill,
    13: composed.drill_campaign_storm,
    14: composed.drill_paced_primary,
    15: composed.drill_relay_urgency,
    16: composed.drill_replay_expired,
    17: composed.drill_clock_skew,
    # Abuse of the triggers.
    18: composed.drill_reset_flood,
    # Status webhooks out (durable jobs) under a receiver's outage.
    19: composed.drill_webhooks_down,
    20: composed.drill_jobs_sigkill,
    # Send later and cancel before it goes, with workers killed.
    21: composed.drill_scheduled_cancel,
    # Retention: the pruner killed mid-batch and PostgreSQL restarted while sends flow.
    22: composed.drill_prune_killed,
}


def run_drill(stack: ChaosStack, number: int, plan: Plan, rng: random.Random) -> DrillRow:
    """One drill on a clean slate (empty ledger, no faults, breakers closed); a crash is a failed row.

    Whatever the drill left down is brought back afterwards, so the next drill starts healthy.
    """
    drill = DRILLS[number]
    stack.sandbox.clear()
    stack.sandbox.clear_faults()
    stack.sandbox.clear_callbacks()
    for pattern in ("jobs:breaker:*", "jobs:ratelimit:*"):  # breakers closed, no pace or penalty left over
        for key in stack.redis_client().scan_iter(pattern):
            stack.redis_client().delete(key)
    started = time.monotonic()
    try:
        row = drill(stack, plan, rng)
    except Exception as exc:
        row = {
            "drill": f"{number}. {drill.__name__}",
            "submitted": None,
            "sent": None,
            "dead": None,
            "lost": None,
            "duplicates": None,
            "recovery_seconds": None,
            "notes": f"CRASHED: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}",
            "checks": {},
            "ok": False,
        }
    finally:
        stack.heal()
    # A resend is a key sent again to the provider that already has it: the sandbox answers it from
    # its idempotency memory, but a real Postmark (without a lookup), FCM or SMTP server would deliver
    # a second copy.  Reported per vendor; vendors with a lookup should show none.
    replays = {name: counters["replays"] for name, counters in stack.sandbox.stats().items() if counters["replays"]}
    if replays:
        row["notes"] += f"; resends (same key to the same provider): {replays}"
    row["replays"] = replays
    row["seconds"] = round(time.monotonic() - started, 1)
    return row

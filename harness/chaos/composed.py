"""The drills that compose faults with campaigns, retries, replays and the relay (drills 11-17).

Each returns a row like the others (drills.py): submitted, sent, dead, lost, duplicates, recovery,
and its own checks.  For a campaign, `submitted` is every notification its fan-out wrote (one per
consenting recipient), `duplicates` counts ledger entries beyond the first per notification across
every provider, and a skipped row (consent withdrawn, campaign cancelled) is final, not lost.
"""

from __future__ import annotations

import base64
import glob
import heapq
import json
import random
import re
import subprocess  # nosec B404 - drills start our own manage.py
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import requests
from django.conf import settings
from standardwebhooks import Webhook

from harness.chaos.drills import (
    BROKER_CRASH_WINDOW_SECONDS,
    REQUEST_TIMEOUT_SECONDS,
    DrillRow,
    Plan,
    Submission,
    Tally,
    _restart_crashed_pools,
    _slow_providers,
    _tag,
    api_session,
    burst_bodies,
    in_background,
    message_body,
    percentile,
    result_row,
    start_burst,
    submit,
    tally,
    wait_final,
)
from harness.chaos.stack import REPO, ChaosStack, StackError
from harness.waiting import wait_until
from settings.topology import Priority

CAMPAIGN_CONTEXT = {"headline": "Chaos sale", "body": "Everything must go"}
#: Every tenth seeded recipient has no marketing consent: the fan-out must leave them out.
NO_CONSENT_EVERY = 10
#: A vendor answer time for the campaign drills that kill or pause mid-send: a call is always in flight.
CAMPAIGN_LATENCY_MS = 25
#: After a cancel is answered, calls claimed before it may still land for this long (at most one claim's calls).
CANCEL_IN_FLIGHT_SECONDS = 2.0
#: The issue's promise for a scheduled notification: sent within this many seconds after its send_at.
SCHEDULED_ON_TIME_SECONDS = 2.0
FINAL_CAMPAIGN = ("completed", "cancelled")
ROW_FINAL = ("sent", "dead", "skipped")


# --- campaigns on the stack ------------------------------------------------------------


def seed_audience(stack: ChaosStack, tag: str, count: int) -> int:
    """`count` recipients tagged `tag` (one SQL statement); returns how many consent to marketing e-mail."""
    stack.execute(
        """
        INSERT INTO notifications_recipient (email, locale, timezone, email_marketing_consent, sms_marketing_consent,
                                             push_marketing_consent, tags, created_at)
        SELECT %(tag)s || '-' || g || '@example.com', 'en', 'UTC', g %% %(every)s <> 0, false, false,
               ARRAY[%(tag)s]::varchar(50)[], now()
        FROM generate_series(1, %(count)s) g
        """,
        {"tag": tag, "count": count, "every": NO_CONSENT_EVERY},
    )
    return count - count // NO_CONSENT_EVERY


def campaign_post(stack: ChaosStack, session: requests.Session, path: str, body: Any = None) -> requests.Response:
    return session.post(f"{stack.api_url}/api/v1/campaigns{path}", json=body, timeout=REQUEST_TIMEOUT_SECONDS)


def start_campaign(stack: ChaosStack, session: requests.Session, tag: str) -> int:
    """Create and start an e-mail campaign to `tag` through the API, as an operator's script would."""
    created = campaign_post(
        stack,
        session,
        "",
        {
            "name": tag,
            "template": "newsletter",
            "channel": "email",
            "context": CAMPAIGN_CONTEXT,
            "audience": {"tag": tag},
        },
    )
    if created.status_code != 201:
        raise AssertionError(f"creating the campaign answered {created.status_code}: {created.text[:300]}")
    campaign_id = created.json()["id"]
    started = campaign_post(stack, session, f"/{campaign_id}/start")
    if started.status_code != 202:
        raise AssertionError(f"starting the campaign answered {started.status_code}: {started.text[:300]}")
    return campaign_id


def campaign_row(stack: ChaosStack, campaign_id: int) -> dict[str, Any]:
    status, materialized, sent, dead, skipped, fanned_out = stack.query(
        "SELECT status, materialized_count, sent_count, dead_count, skipped_count, fanout_completed_at IS NOT NULL "
        "FROM notifications_campaign WHERE id = %s",
        (campaign_id,),
    )[0]
    return {
        "status": status,
        "materialized": materialized,
        "sent": sent,
        "dead": dead,
        "skipped": skipped,
        "fanned_out": fanned_out,
    }


def row_statuses(stack: ChaosStack, campaign_id: int) -> Counter:
    return Counter(
        dict(
            stack.query(
                "SELECT status, count(*) FROM notifications_notification WHERE campaign_id = %s GROUP BY status",
                (campaign_id,),
            )
        )
    )


def wait_campaign_final(stack: ChaosStack, campaign_id: int, timeout: float) -> bool:
    """Until the campaign is completed or cancelled and every one of its rows is final; False on timeout."""

    def final() -> bool:
        campaign = campaign_row(stack, campaign_id)
        statuses = row_statuses(stack, campaign_id)
        return campaign["status"] in FINAL_CAMPAIGN and campaign["fanned_out"] and set(statuses) <= set(ROW_FINAL)

    # Any error counts as "not yet": PostgreSQL restarting is a drill's business, not a reason to stop waiting.
    return bool(wait_until(final, timeout=timeout, interval=0.5, ignoring=(Exception,)))


def sent_so_far(stack: ChaosStack) -> int:
    """Messages the sandbox accepted since the drill began (its ledger is cleared per drill)."""
    return sum(counters["accepted"] for counters in stack.sandbox.stats().values())


def campaign_tally(stack: ChaosStack, campaign_id: int) -> tuple[Tally, dict[str, bool], list[str]]:
    """The outcome of a campaign's rows against the ledger, the checks every campaign drill makes, and notes."""
    rows = stack.query(
        "SELECT id::text, status, provider, extract(epoch from sent_at)::float8, extract(epoch from updated_at)::float8 "
        "FROM notifications_notification WHERE campaign_id = %s",
        (campaign_id,),
    )
    result = Tally(submitted=len(rows))
    keys = {f"notification:{row[0]}": row for row in rows}
    for entry in stack.sandbox.entries(limit=1_000_000):
        if entry["idempotency_key"] in keys:
            result.ledger.setdefault(entry["idempotency_key"], []).append(entry)
    result.duplicates = sum(len(entries) - 1 for entries in result.ledger.values())
    for key, (row_id, status, provider, sent_at, updated_at) in keys.items():
        result.rows[row_id] = {"id": row_id, "key": key, "status": status, "sent_at": sent_at, "updated_at": updated_at}
        if status == "sent":
            result.sent += 1
            result.providers[provider] += 1
            if key not in result.ledger:
                result.sent_without_ledger.append(row_id)
        elif status == "dead":
            result.dead += 1
        elif status == "skipped":
            result.skipped += 1
        else:
            result.unfinished[status] += 1
    campaign = campaign_row(stack, campaign_id)
    counters = (campaign["sent"], campaign["dead"], campaign["skipped"])
    checks = {
        "the campaign's counters equal its rows": counters == (result.sent, result.dead, result.skipped),
        "sent + dead + skipped == recipients": sum(counters) == campaign["materialized"] == result.submitted,
        "no row left unfinished": not result.unfinished,
    }
    notes = [
        f"campaign {campaign_id} {campaign['status']}: {result.submitted} rows, sent {dict(result.providers)}, "
        f"counters sent/dead/skipped {counters}"
    ]
    if result.unfinished:
        batches = stack.query(
            "SELECT id, status, runs, unfinished_runs, extract(epoch from next_attempt_at - now())::float8, "
            "extract(epoch from now() - queued_at)::float8 FROM notifications_campaignbatch "
            "WHERE campaign_id = %s AND status <> 'done'",
            (campaign_id,),
        )
        notes.append(f"batches not done (id, status, runs, unfinished, due in s, queued s ago): {batches}")
    return result, checks, notes


def rows_in(stack: ChaosStack, campaign_id: int, status: str) -> list[str]:
    return [
        row[0]
        for row in stack.query(
            "SELECT id::text FROM notifications_notification WHERE campaign_id = %s AND status = %s",
            (campaign_id, status),
        )
    ]


def final_after(stack: ChaosStack, ids: list[str], since: float) -> float | None:
    """Seconds from `since` until the last of `ids` was final (None if one is not)."""
    if not ids:
        return 0.0
    rows = stack.query(
        "SELECT status, extract(epoch from coalesce(sent_at, updated_at))::float8 FROM notifications_notification "
        "WHERE id = ANY(%s::uuid[])",
        (ids,),
    )
    if any(status not in ROW_FINAL for status, _ in rows):
        return None
    return max(0.0, max(at for _, at in rows) - since)


def _completed_exactly_once(
    stack: ChaosStack, campaign_id: int, outcome: Tally, consenting: int, finished: bool
) -> dict[str, bool]:
    """The promise of a campaign met by a fault: it completes, one e-mail per consenting recipient, none dead."""
    return {
        "the campaign completed": finished and campaign_row(stack, campaign_id)["status"] == "completed",
        "every consenting recipient has exactly one notification": outcome.submitted == consenting,
        "every consenting recipient got exactly one e-mail": len(outcome.ledger) == consenting
        and outcome.duplicates == 0,
        "nothing was dead-lettered": outcome.dead == 0,
    }


# --- the drills -----------------------------------------------------------------------------


def drill_campaign_provider_errors(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """A campaign while the primary e-mail provider answers 500 to a share of calls: each consenting
    recipient gets exactly one e-mail (the failed calls' messages go to the fallback or retry), none dead."""
    tag = _tag(11)
    consenting = seed_audience(stack, tag, plan.campaign_recipients)
    stack.sandbox.set_fault("postmark", error_rate=plan.campaign_error_rate, status=500)
    campaign_id = start_campaign(stack, api_session(stack), tag)
    time.sleep(plan.campaign_error_seconds)
    refused = stack.sandbox.stats().get("postmark", {}).get("rejected", 0)
    stack.sandbox.clear_faults("postmark")
    healed_at = time.time()
    retrying = rows_in(stack, campaign_id, "failed")
    finished = wait_campaign_final(stack, campaign_id, plan.campaign_timeout)
    outcome, checks, notes = campaign_tally(stack, campaign_id)
    recovery = final_after(stack, retrying, healed_at)
    return result_row(
        11,
        f"Campaign, primary 500 on {plan.campaign_error_rate:.0%} of calls {plan.campaign_error_seconds:.0f}s",
        outcome,
        checks={**checks, **_completed_exactly_once(stack, campaign_id, outcome, consenting, finished)},
        notes=[
            *notes,
            f"{refused} messages refused with 500 during the fault; {len(retrying)} rows waiting for a retry at "
            "its end",
            "recovery = heal -> those rows final",
        ],
        recovery=recovery,
    )


def drill_campaign_sigkill(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """SIGKILL the whole marketing pool at random moments of a campaign (restarted as a supervisor would):
    it completes, every recipient once, and no message goes to a vendor that could be asked instead."""
    tag = _tag(12)
    consenting = seed_audience(stack, tag, plan.campaign_recipients)
    stack.sandbox.set_fault("postmark", latency_ms=CAMPAIGN_LATENCY_MS)
    campaign_id = start_campaign(stack, api_session(stack), tag)
    kills: list[tuple[float, list[str]]] = []
    notes = []
    for share in sorted(rng.uniform(0.1, 0.8) for _ in range(plan.campaign_kills)):
        wait_until(
            lambda share=share: sent_so_far(stack) >= share * consenting, timeout=plan.campaign_timeout, interval=0.05
        )
        in_flight = rows_in(stack, campaign_id, "sending")
        stack.kill_pool(Priority.MARKETING)
        kills.append((time.time(), in_flight))
        stack.start_pool(Priority.MARKETING)
        notes.append(f"killed at {sent_so_far(stack)}/{consenting} sent with {len(in_flight)} rows in flight")
    finished = wait_campaign_final(stack, campaign_id, plan.campaign_timeout)
    outcome, checks, campaign_notes = campaign_tally(stack, campaign_id)
    recoveries = [final_after(stack, ids, at) for at, ids in kills]
    replays = stack.sandbox.stats().get("postmark", {}).get("replays", 0)
    return result_row(
        12,
        f"Campaign, SIGKILL the marketing pool x{plan.campaign_kills}",
        outcome,
        checks={
            **checks,
            **_completed_exactly_once(stack, campaign_id, outcome, consenting, finished),
            "no message was sent to postmark again (looked up instead)": replays == 0,
        },
        notes=[*campaign_notes, *notes, "recovery = kill -> the rows in flight final"],
        recovery=None if None in recoveries else max(recoveries),
    )


def _storm(
    stack: ChaosStack, plan: Plan, rng: random.Random, *, ending: str
) -> tuple[Tally, dict[str, bool], list[str], float | None]:
    tag = _tag(13)
    baseline = sent_so_far(stack)
    # Slow enough that the campaign outlasts the storm: every transition meets batches in flight.
    stack.sandbox.set_fault("postmark", latency_ms=CAMPAIGN_LATENCY_MS)
    seed_audience(stack, tag, plan.campaign_recipients)
    session = api_session(stack)
    campaign_id = start_campaign(stack, session, tag)
    state, transitions, refused = "running", 0, Counter()
    gap = plan.storm_seconds / plan.storm_transitions
    while transitions < plan.storm_transitions:
        time.sleep(rng.uniform(0, 2 * gap))
        action = "pause" if state == "running" else "resume"
        answer = campaign_post(stack, session, f"/{campaign_id}/{action}")
        if answer.status_code == 202:
            state = "paused" if action == "pause" else "running"
            transitions += 1
        elif campaign_row(stack, campaign_id)["status"] == "completed":
            break  # it finished between two transitions: the storm is over
        else:
            refused[answer.status_code] += 1
    sent_before_end = sent_so_far(stack) - baseline
    if ending == "resume" and state == "paused":
        campaign_post(stack, session, f"/{campaign_id}/resume")
        transitions += 1
    cancel_answered, cancel_checks, cancel_notes = None, {}, []
    if ending == "cancel":
        if state == "paused":  # the cancel must meet batches in flight
            campaign_post(stack, session, f"/{campaign_id}/resume")
            transitions += 1
            time.sleep(1.0)
        cancel_answered, cancel_checks, cancel_notes, answer = _cancel_meets_faults(stack, session, campaign_id, rng)
        transitions += 1
        if answer.status_code != 202 and campaign_row(stack, campaign_id)["status"] != "completed":
            refused[answer.status_code] += 1
    ended_at = time.time()
    finished = wait_campaign_final(stack, campaign_id, plan.campaign_timeout)
    if cancel_answered is not None:
        cancel_notes.append(f"every row written final {time.time() - cancel_answered:.1f}s after the cancel")
    outcome, checks, notes = campaign_tally(stack, campaign_id)
    notes += cancel_notes
    checks.update(cancel_checks)
    status = campaign_row(stack, campaign_id)["status"]
    late = [
        entry
        for entries in outcome.ledger.values()
        for entry in entries
        if cancel_answered is not None and entry["accepted_ts"] > cancel_answered + CANCEL_IN_FLIGHT_SECONDS
    ]
    checks = {
        **{f"ending in {ending}: {name}": passed for name, passed in checks.items()},
        f"ending in {ending}: the campaign is final": finished,
        f"ending in {ending}: every transition was accepted": not refused,
    }
    if ending == "resume":
        checks["ending in resume: the campaign completed"] = status == "completed"
    else:
        checks["ending in cancel: the campaign is cancelled (or had completed)"] = status in FINAL_CAMPAIGN
        checks["ending in cancel: nothing sent after the cancel (calls in flight aside)"] = not late
    notes = [
        *notes,
        f"{transitions} transitions ending in {ending}; {sent_before_end} sent during the storm; refused {dict(refused)}",
    ]
    last_final = max((r["sent_at"] or r["updated_at"] for r in outcome.rows.values()), default=ended_at)
    return outcome, checks, notes, max(0.0, last_final - ended_at)


#: The cancel's promise: the counters are final this soon after it answers, but for the rows workers held.
CANCEL_COUNTED_SECONDS = 5.0


def _held_by_workers(stack: ChaosStack, campaign_id: int) -> int:
    """Rows of the campaign a worker holds: unsent rows of batches being sent, rows claimed on the single path."""
    return stack.query(
        """
        SELECT (SELECT coalesce(sum(size - sent_count - dead_count - skipped_count), 0) FROM notifications_campaignbatch
                WHERE campaign_id = %(c)s AND status = 'sending')
             + (SELECT count(*) FROM notifications_notification
                WHERE campaign_id = %(c)s AND status = 'sending' AND priority = 'marketing' AND id NOT IN (
                    SELECT n.id FROM notifications_notification n JOIN notifications_campaignbatch b
                      ON b.campaign_id = %(c)s AND b.status = 'sending'
                     AND n.recipient_id BETWEEN b.first_recipient_id AND b.last_recipient_id
                    WHERE n.campaign_id = %(c)s AND n.status = 'sending'))
        """,
        {"c": campaign_id},
    )[0][0]


def _cancel_meets_faults(
    stack: ChaosStack, session: requests.Session, campaign_id: int, rng: random.Random
) -> tuple[float, dict[str, bool], list[str], requests.Response]:
    """Cancel the running campaign just after a marketing worker is SIGKILLed mid-batch, and restart Redis right
    after the cancel (the sweep's message and every queued batch message are lost): the counters must be final
    within CANCEL_COUNTED_SECONDS but for the rows workers held, then final outright once the dead worker's lease
    ran out, and every row written final in the end (wait_campaign_final)."""
    stack.kill_pool(Priority.MARKETING, child_only=True, rng=rng)
    answer = campaign_post(stack, session, f"/{campaign_id}/cancel")
    answered = time.time()

    def remaining() -> tuple[int, dict[str, Any]]:
        row = campaign_row(stack, campaign_id)
        return row["materialized"] - row["sent"] - row["dead"] - row["skipped"], row

    counted_after, held = None, 0
    while counted_after is None and time.time() < answered + CANCEL_COUNTED_SECONDS + 1:
        held = _held_by_workers(stack, campaign_id)
        if remaining()[0] <= held:
            counted_after = time.time() - answered
        time.sleep(0.05)
    stack.restart_redis(down_seconds=1.0)  # every batch message gone, and the sweep's if it was not taken yet
    wait_until(lambda: not all(stack.alive().values()), timeout=BROKER_CRASH_WINDOW_SECONDS)
    crashed = _restart_crashed_pools(stack)
    exact_after, row = None, {}
    while time.time() < answered + 120.0 and exact_after is None:
        left, row = remaining()
        if left == 0 and row["fanned_out"]:
            exact_after = time.time() - answered
        time.sleep(0.1)
    checks = {
        f"counters final within {CANCEL_COUNTED_SECONDS:.0f}s but for rows workers held": (
            counted_after is not None and counted_after <= CANCEL_COUNTED_SECONDS
        ),
        "counters final outright once the killed worker's rows were taken over": exact_after is not None,
        "no pool exited but on kombu's broker-loss race": all(crashed.values()),
    }
    notes = [
        "cancel met a SIGKILLed marketing worker and a Redis restart: counters final but for "
        f"{held} held rows {_seconds(counted_after)} after the cancel answered, outright {_seconds(exact_after)} "
        f"after; counters then sent/dead/skipped {row.get('sent')}/{row.get('dead')}/{row.get('skipped')} of "
        f"{row.get('materialized')}",
        *(f"{name} exited on the broker's loss and was started again" for name in crashed),
    ]
    return answered, checks, notes, answer


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}s"


def drill_campaign_storm(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """Random pause/resume transitions on a running campaign, ending in resume, then another ending in a cancel that
    meets a SIGKILLed worker and a Redis restart: counters add up (final within seconds of the cancel), nothing
    stuck, nothing sent after the cancel, every row written final."""
    outcome, checks, notes, recoveries = Tally(), {}, [], []
    for ending in ("resume", "cancel"):
        run_outcome, run_checks, run_notes, recovery = _storm(stack, plan, rng, ending=ending)
        outcome.add(run_outcome)
        checks.update(run_checks)
        notes += run_notes
        recoveries.append(recovery)
    return result_row(
        13,
        f"Campaign, pause/resume storm x{plan.storm_transitions}",
        outcome,
        checks=checks,
        notes=[*notes, "recovery = last transition -> the campaign final"],
        recovery=max(recoveries),
    )


def drill_paced_primary(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """The primary answers 429 with a long Retry-After while security e-mails are submitted: all go through
    the fallback at once, none waits on the primary or dies."""
    stack.sandbox.set_fault("postmark", retry_after=plan.paced_retry_after)
    submitted_at = time.time()
    submission = submit(stack, burst_bodies(_tag(14), plan.paced_security, [(Priority.SECURITY, "email")]))
    wait_final(stack, submission.ids, plan.paced_deadline_seconds + 10)
    outcome = tally(stack, submission.ids, refused=submission.refused)
    last = max((r["sent_at"] or r["updated_at"] for r in outcome.rows.values()), default=submitted_at)
    rejected = stack.sandbox.stats().get("postmark", {}).get("rejected", 0)
    return result_row(
        14,
        f"Primary 429 Retry-After {plan.paced_retry_after}, security burst",
        outcome,
        checks={
            f"all {plan.paced_security} sent within {plan.paced_deadline_seconds:.0f}s": outcome.sent
            == plan.paced_security
            and last - submitted_at <= plan.paced_deadline_seconds,
            "all through the fallback": dict(outcome.providers) == {"smtp": plan.paced_security},
            "none dead": outcome.dead == 0,
        },
        notes=[f"postmark answered {rejected} call(s) with 429", f"last sent {last - submitted_at:.1f}s after submit"],
        recovery=last - submitted_at,
    )


_DUE_ROWS_SQL = """
INSERT INTO notifications_notification
    (id, idempotency_key, request_fingerprint, priority, channel, recipient_id, "to", template, context, status,
     attempts, provider, provider_message_id, last_error, outcome_unknown, created_at, updated_at, next_attempt_at,
     first_failed_at)
SELECT gen_random_uuid(), %(prefix)s || r.id, '', %(priority)s, 'email', r.id, r.email, %(template)s, %(context)s::jsonb,
       'failed', 1, 'postmark', '', 'postmark: HTTP 500', false, now(), now(), now() - interval '1 second', now()
FROM notifications_recipient r WHERE r.tags @> ARRAY[%(tag)s]::varchar(50)[]
RETURNING id::text
"""


def _due_rows(stack: ChaosStack, tag: str, count: int, priority: str, template: str, context: str) -> list[str]:
    seed_audience(stack, tag, count)
    stack.execute(
        "UPDATE notifications_recipient SET email_marketing_consent = true WHERE tags @> ARRAY[%s]::varchar(50)[]",
        (tag,),
    )
    return [
        row[0]
        for row in stack.query(
            _DUE_ROWS_SQL,
            {"prefix": f"{tag}-", "priority": priority, "tag": tag, "template": template, "context": context},
        )
    ]


def drill_relay_urgency(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """A marketing backlog and a few security rows due for retry at the same moment: the first relay run
    republishes every security row; then everything is sent, once."""
    tag = _tag(15)
    stack.stop_beat()  # this drill runs the relay itself, so its first run is the one measured
    marketing = _due_rows(
        stack, f"{tag}-m", plan.relay_backlog, Priority.MARKETING, "newsletter", '{"headline": "h", "body": "b"}'
    )
    security = _due_rows(
        stack, f"{tag}-s", plan.relay_security, Priority.SECURITY, "password_reset", '{"code": "123456"}'
    )
    relayed = int(
        stack.manage(
            "shell", "-c", "from notifications.recovery import notification_relay; print(notification_relay())"
        ).split()[-1]
    )
    left = stack.query(
        "SELECT count(*) FROM notifications_notification WHERE id = ANY(%s::uuid[]) AND status = 'failed'",
        (security,),
    )[0][0]
    stack.start_beat()
    ran_at = time.time()
    ids = security + marketing
    wait_final(stack, ids, plan.campaign_timeout)
    outcome = tally(stack, ids, fault_end=ran_at)
    return result_row(
        15,
        f"Relay: {plan.relay_backlog} marketing + {plan.relay_security} security due",
        outcome,
        checks={"the first relay run republished every security row": left == 0},
        notes=[
            f"first relay run published {relayed} rows; {plan.relay_security - left}/{plan.relay_security} security",
            "recovery = first run -> last row final",
        ],
    )


def drill_replay_expired(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """Replay dead letters whose time budget ran out long ago, while a short outage of both e-mail providers
    makes their first attempts fail: a replay's budget starts at the replay, so all are sent."""
    stack.sandbox.set_fault("postmark", error_rate=1.0, status=400)  # refused for good: dead at once
    # An order confirmation, not a reset code: a code is wiped when its message dies, and is never replayed.
    bodies = [
        (key, {**body, "template": "order_shipped", "context": {"name": "Ada", "order_number": key[-12:]}})
        for key, body in burst_bodies(_tag(16), plan.replay_letters, [(Priority.TRANSACTIONAL, "email")])
    ]
    submission = submit(stack, bodies)
    wait_final(stack, submission.ids, plan.final_timeout)
    before = dict(
        stack.query(
            "SELECT status, count(*) FROM notifications_notification WHERE id = ANY(%s::uuid[]) GROUP BY status",
            (submission.ids,),
        )
    )
    dead = before.get("dead", 0)
    stack.execute(
        "UPDATE notifications_notification SET created_at = now() - interval '1 day' WHERE id = ANY(%s::uuid[])",
        (submission.ids,),
    )
    letters = [
        str(row[0])
        for row in stack.query(
            "SELECT id FROM jobs_deadletter WHERE subject_id = ANY(%s) AND status = 'open'", (submission.ids,)
        )
    ]
    stack.sandbox.clear_faults()
    for provider in ("postmark", "smtp"):
        stack.sandbox.set_fault(provider, outage=True)
    stack.manage("deadletters", "replay", "--id", *letters)
    time.sleep(2.0)
    stack.sandbox.clear_faults()
    healed_at = time.time()
    wait_final(stack, submission.ids, plan.final_timeout)
    outcome = tally(stack, submission.ids, fault_end=healed_at, refused=submission.refused)
    return result_row(
        16,
        f"Replay {plan.replay_letters} dead letters a day old, 2s outage",
        outcome,
        checks={
            "every notification was dead before the replay": dead == plan.replay_letters == len(letters),
            "all sent after the replay": outcome.sent == plan.replay_letters,
        },
        notes=[
            f"before the replay: rows {before}, {len(letters)} open dead letters",
            f"{len(letters)} dead letters replayed at the start of a 2s outage of postmark and smtp",
        ],
    )


#: Debian's libfaketime (package faketime), preloaded into a worker: every wall clock it reads is off by
#: FAKETIME; monotonic clocks stay true.  Preloaded rather than run under the `faketime` command, which
#: would stand between the worker and the signals that stop it.
LIBFAKETIME = "/usr/lib/*/faketime/libfaketimeMT.so.1"
#: The clock-skew drill submits its burst as a stream this long, in this many chunks.
SKEW_STREAM_SECONDS = 10.0
SKEW_STREAM_CHUNKS = 20
#: Run inside the stack (manage.py shell): publish every row of the burst a second time while it is `sending`.
_DUPLICATOR = """
from harness.waiting import wait_until
from jobs.publishing import publish
from notifications.models import Notification
from notifications.tasks import notification_deliver_task
seen = set()
def republish_new_sending():
    sending = Notification.objects.filter(idempotency_key__contains="{tag}-", status="sending")
    for row in sending.only("pk", "priority", "channel"):
        if row.pk not in seen:
            seen.add(row.pk)
            publish(notification_deliver_task.name, args=[str(row.pk)], queue=row.queue)
    return False  # never done: it watches until the time is up
wait_until(republish_new_sending, timeout={seconds}, interval=0.02)
print(len(seen))
"""


def drill_clock_skew(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """A second transactional host whose clock runs `skew_seconds` ahead (libfaketime) shares the queues and
    runs the relay too: leases and due times are PostgreSQL's, so nothing is taken over early or sent twice."""
    _slow_providers(stack)
    started = time.time()
    libraries = glob.glob(LIBFAKETIME)
    if not libraries:
        raise StackError(f"{LIBFAKETIME} is missing: `bash .ci/install-test-tools` installs Debian's faketime")
    skewed = stack.start_extra_pool(
        "transactional-skewed",
        Priority.TRANSACTIONAL,
        env={"LD_PRELOAD": libraries[0], "FAKETIME": f"+{plan.skew_seconds}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"},
    )
    tag = _tag(17)
    mix = [(Priority.TRANSACTIONAL, "email"), (Priority.TRANSACTIONAL, "sms"), (Priority.TRANSACTIONAL, "push")]
    bodies = burst_bodies(tag, plan.skew_burst, mix)
    # Every row is delivered a second time while it is being sent (what a relay or the visibility
    # timeout may do): half the time to the host whose clock is ahead.
    duplicated = in_background(
        stack.manage, "shell", "-c", _DUPLICATOR.format(tag=tag, seconds=SKEW_STREAM_SECONDS + 15), timeout=120
    )
    # A steady stream, so both hosts send and both run the relay meanwhile.
    submission, chunk = Submission(), max(1, len(bodies) // SKEW_STREAM_CHUNKS)
    for start in range(0, len(bodies), chunk):
        submission.add(submit(stack, bodies[start : start + chunk]))
        time.sleep(SKEW_STREAM_SECONDS / SKEW_STREAM_CHUNKS)
    wait_final(stack, submission.ids, plan.final_timeout)
    # Give the relay, which either host may run, a few more turns over the finished burst.
    time.sleep(3 * stack.settings["RELAY_INTERVAL_SECONDS"])
    duplicates_sent = int(duplicated.result().split()[-1])
    outcome = tally(stack, submission.ids, refused=submission.refused)
    log = skewed.output()
    skew = _first_log_time(log)
    skew = None if skew is None else skew - started
    replays = {name: counters["replays"] for name, counters in stack.sandbox.stats().items()}
    refused_claims = log.count(": not claimable")
    return result_row(
        17,
        f"Two worker hosts, clocks {plan.skew_seconds}s apart",
        outcome,
        checks={
            # Its first log line came at most the start-up time after `started`, on a clock skew_seconds ahead.
            f"the second host's clock ran {plan.skew_seconds}s ahead": skew is not None
            and plan.skew_seconds <= skew <= plan.skew_seconds + 60,
            "the second host sent part of the burst": _succeeded(log, "notifications.deliver") > 0,
            "the second host was handed rows another host held, and left them": refused_claims > 0,
            "no key was sent twice to any provider": not any(replays.values()),
        },
        notes=[
            f"its first log line {skew if skew is None else round(skew, 1)}s after it was started (real clock)",
            f"{duplicates_sent} rows delivered a second time while sending; the second host ran "
            f"{_succeeded(log, 'notifications.deliver')} deliveries ({refused_claims} of them not claimable) and "
            f"{_succeeded(log, 'notifications.relay')} relay runs; sent by {dict(outcome.providers)}",
        ],
    )


def _first_log_time(log: str) -> float | None:
    """Epoch seconds of the first timestamped line of a worker's log, by the worker's own clock."""
    import datetime as dt

    for line in log.splitlines():
        try:
            moment = dt.datetime.strptime(line.lstrip("[")[:23], "%Y-%m-%d %H:%M:%S,%f")
        except ValueError:
            continue
        return moment.replace(tzinfo=dt.UTC).timestamp()
    return None


def _succeeded(log: str, task: str) -> int:
    """Runs of `task` a worker's log reports as succeeded."""
    return sum(1 for line in log.splitlines() if f"Task {task}[" in line and " succeeded " in line)


#: Threads that flood the password-reset page (browsers of one attacker behind one address).
FLOOD_THREADS = 8


def _reset_form_session(stack: ChaosStack) -> tuple[requests.Session, str]:
    """A browser session with the reset form's CSRF token, as a page load gives it."""
    session = requests.Session()
    page = session.get(f"{stack.api_url}/password-reset/", timeout=REQUEST_TIMEOUT_SECONDS)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return session, token


def _flood_resets(stack: ChaosStack, address: str, count: int, seconds: float) -> Counter:
    """`count` reset requests for `address` spread over `seconds` from FLOOD_THREADS threads; answers by code."""
    answers: Counter = Counter()
    lock = threading.Lock()
    started = time.monotonic()

    def flood(thread: int) -> None:
        session, token = _reset_form_session(stack)
        for index in range(thread, count, FLOOD_THREADS):
            time.sleep(max(0.0, started + index * seconds / count - time.monotonic()))
            try:
                answer = session.post(
                    f"{stack.api_url}/password-reset/",
                    data={"email": address, "csrfmiddlewaretoken": token},
                    headers={"Referer": f"{stack.api_url}/password-reset/"},
                    timeout=REQUEST_TIMEOUT_SECONDS,
                ).status_code
            except requests.RequestException as exc:
                answer = type(exc).__name__
            with lock:
                answers[answer] += 1

    threads = [threading.Thread(target=flood, args=(t,)) for t in range(FLOOD_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def _security_stream(stack: ChaosStack, tag: str, rate: float, seconds: float) -> tuple[Submission, dict[str, float]]:
    """Security e-mails through the API at `rate` per second for `seconds`; the submission and each one's
    submit time by idempotency key."""
    bodies = burst_bodies(tag, int(rate * seconds), [(Priority.SECURITY, "email")])
    submission, submitted_at = Submission(), {}
    started = time.monotonic()
    for index, (key, body) in enumerate(bodies):
        time.sleep(max(0.0, started + index / rate - time.monotonic()))
        submitted_at[key] = time.time()
        submission.add(submit(stack, [(key, body)], threads=1))
    return submission, submitted_at


def _latencies(outcome: Tally, submitted_at: dict[str, float]) -> list[float]:
    """Submit -> the vendor accepted, per sent notification."""
    values = []
    for key, entries in outcome.ledger.items():
        client_key = key.partition(":")[2]
        if client_key in submitted_at:
            values.append(entries[0]["accepted_ts"] - submitted_at[client_key])
    return values


def drill_reset_flood(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """1,000 password-reset requests for one address from one IP in 10 s while security e-mails go through the
    API: at most three reset mails, every request answered like any other, security latency as before."""
    tag = _tag(18)
    victim = f"{tag}-victim@example.com"
    baseline, baseline_at = _security_stream(stack, f"{tag}-before", plan.abuse_security_rate, plan.abuse_seconds)
    stream = in_background(_security_stream, stack, f"{tag}-during", plan.abuse_security_rate, plan.abuse_seconds)
    flood_started = time.monotonic()
    answers = _flood_resets(stack, victim, plan.abuse_requests, plan.abuse_seconds)
    flood_seconds = time.monotonic() - flood_started
    during, during_at = stream.result()
    ids = baseline.ids + during.ids
    wait_final(stack, ids, plan.final_timeout)
    time.sleep(2)  # the reset mails that were let through are on their way too
    before = tally(stack, baseline.ids, refused=baseline.refused)
    outcome = tally(stack, during.ids, refused=during.refused)
    p99_before = percentile(_latencies(before, baseline_at), 0.99)
    p99_during = percentile(_latencies(outcome, during_at), 0.99)
    outcome.add(before)
    resets = len(stack.sandbox.entries(to=victim))
    rows = stack.query('SELECT count(*) FROM notifications_notification WHERE "to" = %s', (victim,))[0][0]
    return result_row(
        18,
        f"Reset-page flood, {plan.abuse_requests} in {plan.abuse_seconds:.0f}s",
        outcome,
        checks={
            "at most 3 reset mails reached the address": resets <= 3 and rows <= 3,
            "every flood request was answered 200, the same page": answers == Counter({200: plan.abuse_requests}),
            "security p99 under 1 s during the flood": p99_during < 1.0,
        },
        notes=[
            f"flood: {sum(answers.values())} requests in {flood_seconds:.1f}s, answers {dict(answers)}; "
            f"{resets} reset mail(s) sent, {rows} row(s) written",
            f"security submit -> accepted p99: {p99_before * 1000:.0f} ms before, {p99_during * 1000:.0f} ms during",
        ],
    )


#: The sandbox receiver that plays the application's webhook endpoint in drill 19.
WEBHOOK_RECEIVER = "receiver"


def _reports_on(stack: ChaosStack) -> None:
    """The sandbox reports what Postmark, Twilio and Vonage accept to the stack's web, as those vendors would."""
    mix = {"delay_ms": 300, "delivered": 0.9, "bounced": 0.05, "opened": 0.5}
    providers = stack.settings["NOTIFICATIONS_PROVIDERS"]
    token = next(p for p in providers["sms"] if p["name"] == "twilio")["options"]["auth_token"]
    base = stack.api_url
    stack.sandbox.set_callbacks(
        "postmark", url=f"{base}/anymail/postmark/tracking/", auth=stack.settings["ANYMAIL"]["WEBHOOK_SECRET"], **mix
    )
    stack.sandbox.set_callbacks("twilio", url=f"{base}/receipts/twilio", secret=token, **mix)
    stack.sandbox.set_callbacks(
        "vonage", url=f"{base}/receipts/vonage", secret=stack.settings["VONAGE_SIGNATURE_SECRET"], **mix
    )


def _send_p99(stack: ChaosStack, ids: list[str]) -> float | None:
    """p99 of created -> sent, seconds, over the sent ones among `ids`."""
    value = stack.query(
        "SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - created_at)) "
        "FROM notifications_notification WHERE id = ANY(%s::uuid[]) AND status = 'sent'",
        (ids,),
    )[0][0]
    return None if value is None else round(float(value), 3)


def _verified_when_received(verifier: Webhook, entry: dict, headers: dict[str, str]) -> dict | None:
    """The payload of a delivery the receiver would have accepted when it came (its signature, and its timestamp
    within the specification's five minutes of that moment), else None.  Not `Webhook.verify` at the end of the
    drill: that compares every timestamp with now, and the first deliveries are older than five minutes by then."""
    try:
        signed_at = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
        received_at = datetime.fromisoformat(entry["accepted_at"].replace("Z", "+00:00"))
        expected = verifier.sign(headers["webhook-id"], signed_at, entry["body"])
    except (KeyError, ValueError):
        return None
    if abs(received_at - signed_at) > timedelta(minutes=5) or expected not in headers["webhook-signature"].split():
        return None
    return json.loads(entry["body"])


def drill_webhooks_down(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """Status webhooks to a receiver that is down for a while, then answers 500 to half its calls, while
    notifications are sent and the providers' reports flow in: every event (ours and the reports) reaches it
    exactly once per webhook-id, signed, in order per notification; the sends beside it are compared with the
    same burst sent with no endpoint and no reports."""
    count = plan.webhook_notifications
    mix = [(Priority.TRANSACTIONAL, "email"), (Priority.TRANSACTIONAL, "sms"), (Priority.SECURITY, "email")]
    baseline = submit(stack, burst_bodies(_tag(19), count, mix))
    wait_final(stack, baseline.ids, plan.final_timeout)
    baseline_p99 = _send_p99(stack, baseline.ids)

    _reports_on(stack)
    secret = "whsec_" + base64.b64encode(rng.randbytes(24)).decode()
    url = stack.sandbox.url(f"/{WEBHOOK_RECEIVER}/hooks/app")
    stack.sandbox.set_fault(WEBHOOK_RECEIVER, outage=True)
    (endpoint_id,) = stack.query(
        "INSERT INTO notifications_webhookendpoint (url, description, secret, event_kinds, active, rate_per_second, "
        "created_at) VALUES (%s, 'drill 19', %s, '{}', true, 500, now()) RETURNING id",
        (url, secret),
    )[0]
    down_at = time.time()
    try:
        submission = submit(stack, burst_bodies(_tag(19), count, mix))
        wait_final(stack, submission.ids, plan.final_timeout)
        outcome = tally(stack, submission.ids)
        with_p99 = _send_p99(stack, submission.ids)
        time.sleep(max(0.0, down_at + plan.webhook_down_seconds - time.time()))
        stack.sandbox.clear_faults(WEBHOOK_RECEIVER)
        stack.sandbox.set_fault(WEBHOOK_RECEIVER, error_rate=0.5, status=500)
        back_at = time.time()
        # Every report the sandbox will send has been answered (they flow beside the failing webhooks).
        wait_until(lambda: stack.sandbox.callbacks()["in_flight"] == 0, timeout=plan.final_timeout, interval=0.5)
        events = stack.query(
            "SELECT e.id, e.notification_id::text FROM notifications_notificationevent e "
            "WHERE e.notification_id = ANY(%s::uuid[]) ORDER BY e.id",
            (submission.ids,),
        )
        expected = {f"evt_{event_id}" for event_id, _ in events}

        def received() -> set[str]:
            return {e["idempotency_key"] for e in stack.sandbox.entries(provider=WEBHOOK_RECEIVER, limit=1_000_000)}

        wait_until(lambda: expected <= received(), timeout=plan.webhook_timeout, interval=1.0)
        recovered = time.time() - back_at
    finally:
        stack.sandbox.clear_faults(WEBHOOK_RECEIVER)
        stack.query(
            "UPDATE notifications_webhookendpoint SET active = false WHERE id = %s RETURNING id", (endpoint_id,)
        )
    entries = stack.sandbox.entries(provider=WEBHOOK_RECEIVER, limit=1_000_000)
    ids = Counter(entry["idempotency_key"] for entry in entries)
    verifier = Webhook(secret)
    bad_signatures = 0
    order: dict[str, list[int]] = {}
    for entry in entries:
        headers = {
            name: entry["headers"].get(name, "") for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
        }
        payload = _verified_when_received(verifier, entry, headers)
        if payload is None:
            bad_signatures += 1
            continue
        order.setdefault(payload["data"]["notification_id"], []).append(int(entry["idempotency_key"][4:]))
    missing = expected - set(ids)
    kinds = Counter(
        kind
        for (kind,) in stack.query(
            "SELECT kind FROM notifications_notificationevent WHERE notification_id = ANY(%s::uuid[])",
            (submission.ids,),
        )
    )
    return result_row(
        19,
        "Webhook receiver down, then 50 % errors",
        outcome,
        recovery=recovered,
        checks={
            "every event delivered": not missing,
            "no webhook-id delivered twice": max(ids.values(), default=0) <= 1,
            "every delivery's signature verifies": bad_signatures == 0,
            "events in order per notification": all(v == sorted(v) for v in order.values()),
            "every notification sent or dead": not outcome.unfinished,
            "the providers' reports came in beside it": kinds["delivered"] > 0,
        },
        notes=[
            f"{len(expected)} events ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}), "
            f"{len(ids)} delivered ids, {len(missing)} missing",
            f"send p99 {with_p99} s with the webhooks failing, {baseline_p99} s with no endpoint",
            f"receiver down {plan.webhook_down_seconds:.0f} s; all delivered {recovered:.1f} s after it came back",
        ],
    )


#: The sandbox receiver that plays the partner API of the chore job (tests/jobs/chores) in drill 20.
PARTNER = "partner"


def drill_jobs_sigkill(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """Durable jobs of an app that is not the notifications (the chore job, calling a partner that answers in
    200 ms and with a 500 to a tenth of its calls) while transactional workers are SIGKILLed mid-call: every
    job ends succeeded, or dead with a dead letter; the partner got every succeeded job; a job reached it twice
    only where its worker was killed after the call."""
    count = plan.job_count
    stack.sandbox.set_fault(PARTNER, latency_ms=200, error_rate=0.1, status=500)
    output = stack.manage(
        "job_enqueue", "chores.call_partner", "--arguments", json.dumps({"chore_id": str(uuid.uuid4())}), "--count",
        str(count),
    )  # fmt: skip
    ids = json.loads(output.strip().splitlines()[-1])
    killed: list[int] = []
    try:
        for _ in range(plan.job_kills):
            time.sleep(rng.uniform(1.0, 3.0))
            killed += stack.kill_pool(Priority.TRANSACTIONAL, child_only=True, rng=rng)
        killed_at = time.time()

        def final() -> bool:
            (unfinished,) = stack.query(
                "SELECT count(*) FROM jobs_job WHERE id = ANY(%s) AND status NOT IN ('succeeded', 'dead', 'cancelled')",
                (ids,),
            )[0]
            return unfinished == 0

        done = wait_until(final, timeout=plan.final_timeout, interval=0.5)
        recovered = time.time() - killed_at
    finally:
        stack.sandbox.clear_faults(PARTNER)
    rows = stack.query("SELECT id, status, attempts, last_error FROM jobs_job WHERE id = ANY(%s)", (ids,))
    statuses = Counter(status for _, status, _, _ in rows)
    letters = {
        int(subject)
        for (subject,) in stack.query(
            "SELECT subject_id FROM jobs_deadletter WHERE job_name = 'chores.call_partner' AND subject_id = ANY(%s)",
            ([str(i) for i in ids],),
        )
    }
    calls = Counter(entry["idempotency_key"] for entry in stack.sandbox.entries(provider=PARTNER, limit=1_000_000))
    succeeded = {job_id for job_id, status, _, _ in rows if status == "succeeded"}
    dead = {job_id for job_id, status, _, _ in rows if status == "dead"}
    twice = sum(1 for n in calls.values() if n > 1)
    # The table's duplicates column counts notifications; a job called twice is reported in the notes and checked
    # against the kills (a job is at least once: the partner deduplicates on its Idempotency-Key).
    outcome = Tally(submitted=count, sent=statuses["succeeded"], dead=statuses["dead"])
    outcome.dead_reasons.update(error.split(":")[0][:60] for _, status, _, error in rows if status == "dead")
    return result_row(
        20,
        "Durable jobs, workers SIGKILLed",
        outcome,
        recovery=recovered,
        checks={
            "every job succeeded or dead": bool(done) and statuses["succeeded"] + statuses["dead"] == count,
            "every succeeded job reached the partner": all(calls[f"chore-{i}"] >= 1 for i in succeeded),
            "every dead job has a dead letter": dead <= letters,
            "a job reached the partner twice only where a worker was killed": twice <= len(killed),
            "no attempts beyond the policy's 4": max((a for _, _, a, _ in rows), default=0) <= 4,
        },
        notes=[
            f"{dict(statuses)}; {len(killed)} worker(s) killed; {twice} job(s) called twice (the partner deduplicates "
            "on the job's Idempotency-Key)",
        ],
    )


# --- send later, cancel before it goes ---------------------------------------------------


def _schedule(
    stack: ChaosStack,
    tag: str,
    count: int,
    ahead: tuple[float, float],
    rng: random.Random,
    on_accepted: Callable[[str, dict[str, Any]], None],
) -> dict[str, dict[str, Any]]:
    """POST `count` notifications, each with a send_at drawn from `ahead` seconds after its own request (a 5xx is
    retried with the same key and body); key -> {id, send_at (epoch), accepted (epoch)}, each also handed to
    `on_accepted(key, entry)` as it is accepted."""
    mix = [(Priority.TRANSACTIONAL, "email"), (Priority.TRANSACTIONAL, "sms"), (Priority.SECURITY, "email")]
    offsets = [rng.uniform(*ahead) for _ in range(count)]
    send_at: dict[str, float] = {}
    accepted: dict[str, dict[str, Any]] = {}

    def body(index: int) -> Callable[[], dict[str, Any]]:
        def build() -> dict[str, Any]:
            send_at[f"{tag}-{index}"] = moment = time.time() + offsets[index]
            return {
                **message_body(tag, index, *mix[index % len(mix)]),
                "send_at": datetime.fromtimestamp(moment, tz=UTC).isoformat(),
                "cancellation_key": f"{tag}-group-{index % 10}",
            }

        return build

    def heard(key: str, notification_id: str) -> None:
        accepted[key] = entry = {"id": notification_id, "send_at": send_at[key], "accepted": time.time()}
        on_accepted(key, entry)

    submit(stack, [(f"{tag}-{i}", body(i)) for i in range(count)], threads=8, on_accepted=heard)
    return accepted


class _Canceller:
    """Cancels by id at chosen moments, from four threads, as the notifications are accepted; the answers by id."""

    def __init__(self, stack: ChaosStack) -> None:
        self.stack = stack
        self.heap: list[tuple[float, str]] = []
        self.answers: dict[str, int] = {}
        self.late: list[float] = []
        self.lock = threading.Condition()
        self.closed = False
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(4)]
        for thread in self.threads:
            thread.start()

    def add(self, moment: float, notification_id: str) -> None:
        with self.lock:
            heapq.heappush(self.heap, (moment, notification_id))
            self.lock.notify()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.lock.notify_all()
        for thread in self.threads:
            thread.join()

    def _run(self) -> None:
        session = api_session(self.stack)
        while True:
            with self.lock:
                while not self.heap or self.heap[0][0] > time.time():
                    if self.closed and not self.heap:
                        return
                    self.lock.wait(timeout=min(0.05, max(0.0, self.heap[0][0] - time.time())) if self.heap else 0.05)
                moment, notification_id = heapq.heappop(self.heap)
            self.late.append(time.time() - moment)
            for _ in range(20):
                try:
                    response = session.post(
                        f"{self.stack.api_url}/api/v1/notifications/{notification_id}/cancel",
                        timeout=REQUEST_TIMEOUT_SECONDS,
                    )
                except requests.RequestException:
                    time.sleep(0.2)
                    continue
                if response.status_code < 500:
                    with self.lock:
                        self.answers[notification_id] = response.status_code
                    break


def drill_scheduled_cancel(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """Notifications scheduled a few seconds to a minute ahead through the API, a fifth of them cancelled by id at
    random moments before they are due (as soon as each is accepted, a moment is drawn between then and half a
    second before its send_at), transactional workers SIGKILLed meanwhile: every cancel answered 200 sent nothing,
    every other notification was sent exactly once, none before its send_at, and within SCHEDULED_ON_TIME_SECONDS
    after it (but those a killed worker held, which wait for their lease)."""
    tag = _tag("sched")
    count = plan.scheduled_count
    chosen = set(rng.sample([f"{tag}-{i}" for i in range(count)], min(plan.scheduled_cancels, count)))
    canceller = _Canceller(stack)
    moments = random.Random(rng.random())
    lock = threading.Lock()

    def accepted(key: str, entry: dict[str, Any]) -> None:
        if key in chosen:
            with lock:
                moment = moments.uniform(entry["accepted"], max(entry["accepted"], entry["send_at"] - 0.5))
            canceller.add(moment, entry["id"])

    killed: list[int] = []

    def kill_meanwhile() -> None:
        for _ in range(plan.scheduled_kills):
            time.sleep(rng.uniform(plan.scheduled_ahead[0], plan.scheduled_ahead[1]))
            killed.extend(stack.kill_pool(Priority.TRANSACTIONAL, child_only=True, rng=rng))

    depths: Counter = Counter()
    sampling = threading.Event()

    def sample_queues() -> None:
        client = stack.redis_client()
        while not sampling.is_set():
            for queue in ("transactional.email", "transactional.sms", "security.email", "jobs.default"):
                depths[queue] = max(depths[queue], client.llen(queue))
            time.sleep(0.5)

    sampler = in_background(sample_queues)
    started = time.time()
    killer = in_background(kill_meanwhile)
    scheduled = _schedule(stack, tag, count, plan.scheduled_ahead, rng, accepted)
    killer.result()
    canceller.close()
    ids = [entry["id"] for entry in scheduled.values()]
    answers = canceller.answers
    cancelled = {i for i, code in answers.items() if code == 200}
    to_send = [i for i in ids if i not in cancelled]
    wait_final(stack, to_send, timeout=plan.final_timeout)
    sampling.set()
    sampler.result()
    outcome = tally(stack, to_send, refused=[f"{tag}-{i}" for i in range(count) if f"{tag}-{i}" not in scheduled])
    rows = {
        notification_id: (status, key, queued_at.timestamp() if queued_at else None, f"{priority}.{channel}")
        for notification_id, status, key, queued_at, priority, channel in stack.query(
            "SELECT id::text, status, idempotency_key, queued_at, priority, channel FROM notifications_notification "
            "WHERE id = ANY(%s::uuid[])",
            (ids,),
        )
    }
    accepted_at: dict[str, float] = {}
    for entry in stack.sandbox.entries(limit=1_000_000):
        accepted_at.setdefault(entry["idempotency_key"], entry["accepted_ts"])
    ledger = Counter(entry["idempotency_key"] for entry in stack.sandbox.entries(limit=1_000_000))
    by_id = {entry["id"]: entry for entry in scheduled.values()}
    lateness = {i: accepted_at[rows[i][1]] - by_id[i]["send_at"] for i in to_send if rows[i][1] in accepted_at}
    released = [rows[i][2] - by_id[i]["send_at"] for i in to_send if rows[i][2]]
    late = sorted(i for i, seconds in lateness.items() if seconds > SCHEDULED_ON_TIME_SECONDS)
    early = [i for i, seconds in lateness.items() if seconds < 0]
    # A killed worker's claim (up to a call's worth of rows) waits for its lease to run out.
    held_at_most = len(killed) * settings.NOTIFICATIONS_SINGLE_BATCH
    values = list(lateness.values())
    by_queue: dict[str, list[float]] = {}
    for notification_id, seconds in lateness.items():
        by_queue.setdefault(rows[notification_id][3], []).append(seconds)
    return result_row(
        21,
        "Scheduled sends, cancels at random moments, workers SIGKILLed",
        outcome,
        recovery=None,
        checks={
            "every notification accepted": len(scheduled) == count,
            "every planned cancel answered (200, or 409 once a worker took it)": len(answers) == len(chosen),
            "a cancel answered 200 sent nothing": all(
                rows[i][0] == "cancelled" and ledger[rows[i][1]] == 0 for i in cancelled
            ),
            "every other notification sent exactly once": outcome.sent == len(to_send) and outcome.duplicates == 0,
            "none sent before its send_at": not early,
            f"each within {SCHEDULED_ON_TIME_SECONDS:.0f} s of its send_at but those a killed worker held": len(late)
            <= held_at_most,
        },
        notes=[
            f"{len(scheduled)} scheduled {plan.scheduled_ahead[0]:.0f}-{plan.scheduled_ahead[1]:.0f} s ahead, "
            f"submitted in {max((e['accepted'] for e in scheduled.values()), default=started) - started:.1f} s; "
            f"{len(cancelled)} cancelled, {sum(1 for c in answers.values() if c == 409)} too late (409), cancels "
            f"p99 {percentile(canceller.late, 0.99):.2f} s after their moment; {len(killed)} worker(s) killed",
            f"released after send_at: p50 {percentile(released, 0.5):.2f} s, p99 {percentile(released, 0.99):.2f} s; "
            f"deepest queues: {dict(depths)}",
            f"sent after send_at: p50 {percentile(values, 0.5):.2f} s, p99 {percentile(values, 0.99):.2f} s, "
            f"max {max(values, default=0):.2f} s; {len(late)} later than {SCHEDULED_ON_TIME_SECONDS:.0f} s "
            f"(at most {held_at_most} allowed); p50/p99 by queue: "
            + ", ".join(
                f"{queue} {percentile(v, 0.5):.2f}/{percentile(v, 0.99):.2f} s" for queue, v in sorted(by_queue.items())
            ),
        ],
    )


# --- retention under faults -----------------------------------------------------------------

_EXPIRED_ROWS_SQL = """
WITH campaign AS (
    INSERT INTO notifications_campaign (name, template, channel, context, audience_locale, audience_tag, status,
        materialized_count, sent_count, dead_count, skipped_count, segments_total, segments_done, last_error,
        created_at, started_at, finished_at, updated_at)
    VALUES (%(name)s, 'newsletter', 'email', '{}', '', '', 'completed', %(count)s, %(count)s, 0, 0, 0, 0, '',
        now() - %(age)s::interval, now() - %(age)s::interval, now() - %(age)s::interval, now())
    RETURNING id
),
written AS (
    INSERT INTO notifications_notification (id, idempotency_key, request_fingerprint, priority, channel,
        recipient_id, "to", template, context, status, attempts, provider, provider_message_id, last_error,
        outcome_unknown, campaign_id, created_at, updated_at, sent_at)
    SELECT (lpad(to_hex(c.id), 12, '0') || '80008' || lpad(to_hex(g), 15, '0'))::uuid, '', '', 'marketing',
        'email', -g, 'old-' || g || '@example.com', 'newsletter', '{}', %(status)s, 1, 'postmark', '', '', false, c.id,
        now() - %(age)s::interval, now() - %(age)s::interval, now() - %(age)s::interval
    FROM campaign c, generate_series(1, %(count)s) g
    RETURNING id, created_at
)
INSERT INTO notifications_notificationevent (notification_id, kind, at, provider, data, provider_message_id, created_at)
SELECT id, 'sent', created_at, 'postmark', '{}', '', created_at FROM written
"""

#: Single sends made `age` ago: version-7 ids of that moment (jobs/ids.py), so they land in that week's partition.
_OLD_SINGLE_SQL = """
WITH written AS (
    INSERT INTO notifications_notification (id, idempotency_key, request_fingerprint, priority, channel,
        recipient_id, "to", template, context, status, attempts, provider, provider_message_id, last_error,
        outcome_unknown, created_at, updated_at, sent_at)
    SELECT (lpad(to_hex((extract(epoch FROM t.at) * 1000)::bigint), 12, '0') || '7' || substr(t.h, 1, 3) || '8'
            || substr(t.h, 4, 15))::uuid,
        '', '', 'transactional', 'email', -g, %(prefix)s || g || '@example.com', 'order_shipped', '{}', %(status)s, 1,
        'postmark', '', '', false, t.at, t.at, t.at
    FROM generate_series(1, %(count)s) g,
         LATERAL (SELECT now() - %(age)s::interval + g * interval '1 millisecond' AS at, md5(%(prefix)s || g) AS h) t
    RETURNING id, created_at
)
INSERT INTO notifications_notificationevent (notification_id, kind, at, provider, data, provider_message_id, created_at)
SELECT id, 'sent', created_at, 'postmark', '{}', '', created_at FROM written
"""

#: The weeks the drill's expired single sends were made in: each its own partition, so the drop comes in four.
EXPIRED_WEEKS = ("200 days", "193 days", "186 days", "179 days")


def _old_campaign_rows(stack: ChaosStack, name: str, count: int, *, age: str, status: str = "sent") -> None:
    stack.execute(_EXPIRED_ROWS_SQL, {"name": name, "count": count, "age": age, "status": status})


def _campaign_rows(stack: ChaosStack, name: str) -> int:
    return stack.query(
        "SELECT count(*) FROM notifications_notification n JOIN notifications_campaign c ON c.id = n.campaign_id "
        "WHERE c.name = %s",
        (name,),
    )[0][0]


def _old_single_rows(stack: ChaosStack, prefix: str, count: int, *, age: str, status: str = "sent") -> None:
    stack.execute(_OLD_SINGLE_SQL, {"prefix": prefix, "count": count, "age": age, "status": status})


def _single_rows(stack: ChaosStack, prefix: str) -> int:
    return stack.query(
        'SELECT count(*) FROM notifications_notification WHERE "to" LIKE %s AND campaign_id IS NULL', (prefix + "%",)
    )[0][0]


def drill_prune_killed(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """`manage.py prune` drops four expired weeks of single sends (partitions) and deletes expired campaign rows of
    the default partition (rows of no partition, as after an upgrade) while single sends flow; the pruner is
    SIGKILLed between two drops, a reader holds the table past the drop's lock timeout, PostgreSQL is restarted,
    then prune runs again: every expired row and its event gone, every row still within its keeping time (or not
    final, however old: kept out of its dropped week) kept, every send of the burst sent exactly once."""
    tag = _tag("prune")
    expired, kept, unfinished, legacy = f"{tag}-expired-", f"{tag}-kept", f"{tag}-unfinished-", f"{tag}-legacy"
    stack.manage("partitions", "--since", (datetime.now(UTC) - timedelta(days=210)).strftime("%Y-%m-%d"))
    per_week = plan.prune_rows // len(EXPIRED_WEEKS)
    total = per_week * len(EXPIRED_WEEKS)
    for age in EXPIRED_WEEKS:
        _old_single_rows(stack, expired, per_week, age=age)
    _old_single_rows(stack, unfinished, per_week // 10, age=EXPIRED_WEEKS[0], status="failed")
    # Campaign numbers no partition covers: their rows wait in the default partition and go row by row.
    stack.execute("SELECT setval(pg_get_serial_sequence('notifications_campaign', 'id'), 900000000)")
    _old_campaign_rows(stack, legacy, plan.prune_rows // 10, age="200 days")
    _old_campaign_rows(stack, kept, plan.prune_rows // 10, age="10 days")
    burst, live = start_burst(stack, tag, plan.burst, retry_seconds=120)
    log = open(stack.run_dir / "prune.log", "a")  # noqa: SIM115 - closed below
    # A long pause after each drop: the kill must land between two of them.
    pruner = subprocess.Popen(  # nosec B603 - our own interpreter and manage.py, no shell
        [sys.executable, "manage.py", "prune"],
        cwd=REPO,
        env={**stack.env, "RETENTION_PAUSE_RATIO": "50"},
        stdout=log,
        stderr=log,
    )
    wait_until(lambda: _single_rows(stack, expired) < total, timeout=120, interval=0.05)
    time.sleep(rng.uniform(0.0, 0.2))
    pruner.kill()
    pruner.wait(10)
    left_after_kill = _single_rows(stack, expired)
    # A reader holding the table (a long report) past the drop's lock timeout: the drop gives up in time, changes
    # nothing, and sends go on meanwhile.
    reader = psycopg.connect(stack.database_url, connect_timeout=5)
    try:
        reader.execute("SELECT count(*) FROM notifications_notification WHERE id = %s", (str(uuid.uuid4()),))
        held = stack.manage("prune", "--max-seconds", "10", timeout=120)
        left_while_held = _single_rows(stack, expired)
    finally:
        reader.close()
    stack.stop_postgres()
    time.sleep(2.0)
    stack.start_postgres()
    up_at = time.time()
    try:
        output = stack.manage("prune", timeout=600)
    finally:
        log.close()
    submission = burst.result()
    wait_final(stack, submission.ids, plan.final_timeout)
    outcome = tally(stack, submission.ids, fault_end=up_at, refused=submission.refused)
    orphans = stack.query(
        "SELECT count(*) FROM notifications_notificationevent e WHERE e.notification_id IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM notifications_notification n WHERE n.id = e.notification_id)"
    )[0][0]
    left = {
        "expired": _single_rows(stack, expired),
        "unfinished": _single_rows(stack, unfinished),
        "legacy": _campaign_rows(stack, legacy),
        "kept": _campaign_rows(stack, kept),
    }
    return result_row(
        22,
        "Prune SIGKILLed between partition drops, a reader holding the table, PostgreSQL restarted, sends flowing",
        outcome,
        checks={
            "the pruner was killed between two drops": 0 < left_after_kill < total,
            "a drop behind the long reader gave up and changed nothing": left_while_held == left_after_kill,
            "every expired row deleted by the last run": left["expired"] == 0 and left["legacy"] == 0,
            "rows within their keeping time kept": left["kept"] == plan.prune_rows // 10,
            # (Their events are older than the events' keeping time: the last run deleted those.)
            "rows not final kept out of their dropped week": left["unfinished"] == per_week // 10,
            "no event left of a deleted notification": orphans == 0,
            "every send of the burst sent exactly once": outcome.sent == len(submission.ids) and not outcome.duplicates,
        },
        notes=[
            f"{total} expired rows in {len(EXPIRED_WEEKS)} weekly partitions and {plan.prune_rows // 10} in the "
            f"default one; {total - left_after_kill} dropped before the SIGKILL; behind the reader: "
            f"{held.splitlines()[0].strip() if held.strip() else '(nothing said)'}; last run: "
            f"{' | '.join(line.strip() for line in output.splitlines()[:3])}",
        ],
    )

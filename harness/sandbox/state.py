"""What the sandbox remembers: the ledger of accepted messages, idempotency dedupe, injected faults, held calls, counters.

No I/O, no locks: all of it runs on one asyncio loop, so a check-then-accept must not await between.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

#: Ledger bodies are for assertions, not archives; the cap bounds memory in a load test.
BODY_LIMIT = 2000
#: Seconds of per-second counts /_sandbox/stats reports; enough for a benchmark run.
STATS_WINDOW_SECONDS = 600
DEFAULT_LEDGER_LIMIT = 10_000
#: Recipients at this domain are refused by every e-mail vendor (HTTP and SMTP), so tests
#: can provoke a permanent failure.
INVALID_DOMAIN = "invalid.example"
#: Status an error_rate fault answers with when the request names none.
DEFAULT_ERROR_STATUS = 500

FAULT_FIELDS = ("outage", "error_rate", "status", "latency_ms", "retry_after", "rate_cap", "hold_to")
#: How often a held call looks whether its hold was lifted (a client that hangs up ends it at once).
HOLD_POLL_SECONDS = 0.02

_seq_key = itemgetter("seq")


class FaultError(ValueError):
    """A fault request the sandbox refuses; the text is "<field>: <reason>"."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


class _Counters:
    __slots__ = ("accepted", "replays", "rejected", "per_second")

    def __init__(self) -> None:
        self.accepted = 0
        self.replays = 0
        self.rejected = 0
        self.per_second: dict[int, int] = {}


def _is_number(value: Any) -> bool:
    # bool is an int subclass; `true` is never a valid count or rate.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_fault(payload: Any) -> tuple[str, dict[str, Any]]:
    """Check a POST /_sandbox/faults body; return (provider, changes), None in changes meaning "turn off".

    Raises FaultError naming the first bad field, so a bad request changes nothing.
    """
    if not isinstance(payload, dict):
        raise FaultError("body", "must be a JSON object")
    unknown = sorted(set(payload) - {"provider", *FAULT_FIELDS})
    if unknown:
        raise FaultError(unknown[0], f"unknown fault; use one of {', '.join(FAULT_FIELDS)}")
    provider = payload.get("provider")
    if not isinstance(provider, str) or not provider or "/" in provider:
        raise FaultError("provider", "required: the provider name as in the URL, e.g. 'postmark'")
    changes: dict[str, Any] = {}
    for name in FAULT_FIELDS:
        if name not in payload:
            continue
        value = payload[name]
        if name == "outage":
            if not isinstance(value, bool):
                raise FaultError(name, "must be true or false")
            changes[name] = value or None
            continue
        if value is None or value is False:
            changes[name] = None
            continue
        if name == "error_rate":
            if not _is_number(value) or not 0 <= value <= 1:
                raise FaultError(name, "must be a number between 0 and 1")
            changes[name] = float(value) or None
        elif name == "status":
            if not _is_int(value) or not 400 <= value <= 599:
                raise FaultError(name, "must be an HTTP error status between 400 and 599")
            changes[name] = value
        elif name == "latency_ms":
            if not _is_number(value) or value < 0:
                raise FaultError(name, "must be a non-negative number of milliseconds")
            changes[name] = value or None
        elif name == "retry_after":
            if not _is_int(value) or value < 0:
                raise FaultError(name, "must be a non-negative whole number of seconds")
            changes[name] = value or None
        elif name == "hold_to":
            if not isinstance(value, str) or not value or value != value.strip():
                raise FaultError(name, "must be one recipient as the ledger shows it (address, +number or push token)")
            changes[name] = value
        else:  # rate_cap: 0 is a real cap (nothing accepted), only false/null turns it off
            if not _is_int(value) or value < 0:
                raise FaultError(name, "must be a non-negative whole number of messages per second")
            changes[name] = value
    if not changes:
        raise FaultError("provider", f"name at least one fault: {', '.join(FAULT_FIELDS)}")
    return provider, changes


class SandboxState:
    """Ledger, replays, dedupe memory, faults and counters, keyed by provider name."""

    def __init__(self) -> None:
        self.ledger: list[dict[str, Any]] = []
        self.replays: list[dict[str, Any]] = []
        self.faults: dict[str, dict[str, Any]] = {}
        self._dedupe: dict[tuple[str, str], dict[str, Any]] = {}
        self._counters: dict[str, _Counters] = {}
        # Never reset, not even by clear_ledger(): a poller using since_seq must not
        # see old numbers handed out again.
        self._seq = 0
        self._pruned_second = 0
        self._held: dict[int, dict[str, Any]] = {}
        self._hold_seq = 0
        #: Called with each accepted entry (the delivery reports: callbacks.py).
        self.on_accept: Callable[[dict[str, Any]], None] | None = None

    # --- faults -------------------------------------------------------------

    def set_fault(self, payload: Any) -> dict[str, Any]:
        """Validate and merge one fault request into its provider's faults; return that provider's faults."""
        provider, changes = validate_fault(payload)
        current = dict(self.faults.get(provider, {}))
        for name, value in changes.items():
            if value is None:
                current.pop(name, None)
            else:
                current[name] = value
        if "error_rate" not in current:
            # A status without a rate would be a silent no-op that GET still shows.
            current.pop("status", None)
        if current:
            self.faults[provider] = current
        else:
            self.faults.pop(provider, None)
        return current

    def clear_faults(self, provider: str | None = None) -> None:
        if provider is None:
            self.faults.clear()
        else:
            self.faults.pop(provider, None)

    def latency(self, provider: str) -> float:
        """Seconds to wait before answering (0 without a latency fault)."""
        faults = self.faults.get(provider)
        if not faults:
            return 0.0
        return faults.get("latency_ms", 0) / 1000

    def outage(self, provider: str) -> bool:
        faults = self.faults.get(provider)
        return bool(faults and faults.get("outage"))

    def retry_after(self, provider: str) -> int | None:
        """Seconds every call is told to wait, under a retry_after fault."""
        faults = self.faults.get(provider)
        return faults.get("retry_after") if faults else None

    def injected_error(self, provider: str) -> int | None:
        """The status to fail this call with, if the error_rate dice say so."""
        faults = self.faults.get(provider)
        if not faults:
            return None
        rate = faults.get("error_rate")
        if rate is None or random.random() >= rate:
            return None
        return faults.get("status", DEFAULT_ERROR_STATUS)

    def hold_to(self, provider: str) -> str | None:
        """The recipient whose calls this provider leaves unanswered, under a hold_to fault."""
        faults = self.faults.get(provider)
        return faults.get("hold_to") if faults else None

    async def hold(
        self,
        *,
        provider: str,
        to: str,
        where: str,
        peer: tuple[str, int] | None,
        gone: Callable[[], bool] = lambda: False,
    ) -> None:
        """Leave a call to `to` unanswered for as long as the provider's hold_to fault names `to` and the client
        is there (`gone()` false; a protocol that cancels its handler on hang-up needs no check); the call is
        listed in held() meanwhile."""
        self._hold_seq += 1
        hold_id = self._hold_seq
        now = time.time()
        self._held[hold_id] = {
            "id": hold_id,
            "provider": provider,
            "to": to,
            "where": where,
            "peer_host": peer[0] if peer else None,
            "peer_port": peer[1] if peer else None,
            "held_at": iso_utc(now),
            "held_ts": now,
        }
        try:
            while self.hold_to(provider) == to and not gone():
                await asyncio.sleep(HOLD_POLL_SECONDS)
        finally:
            del self._held[hold_id]

    def held(self, provider: str | None = None) -> list[dict[str, Any]]:
        """The calls being held right now, oldest first."""
        return [call for call in self._held.values() if provider is None or call["provider"] == provider]

    def rate_capped(self, provider: str, count: int, now: float) -> bool:
        """True if accepting `count` more messages now would exceed the provider's rate cap."""
        faults = self.faults.get(provider)
        if not faults or "rate_cap" not in faults:
            return False
        counters = self._counters.get(provider)
        used = counters.per_second.get(int(now), 0) if counters else 0
        return used + count > faults["rate_cap"]

    # --- ledger -------------------------------------------------------------

    def replay(self, provider: str, idempotency_key: str | None, now: float) -> dict[str, Any] | None:
        """The entry this provider already accepted under this key (counting a replay), or None."""
        if not idempotency_key:
            return None
        original = self._dedupe.get((provider, idempotency_key))
        if original is None:
            return None
        self.replays.append({"provider": provider, "idempotency_key": idempotency_key, "at": iso_utc(now)})
        self._counters_for(provider).replays += 1
        return original

    def accept(
        self,
        *,
        provider: str,
        vendor: str,
        to: str,
        message_id: str,
        now: float,
        idempotency_key: str | None = None,
        subject: str | None = None,
        body: str | None = None,
        headers: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
        batch: bool = False,
    ) -> dict[str, Any]:
        """Append one accepted message to the ledger and remember its idempotency key."""
        self._seq += 1
        entry = {
            "seq": self._seq,
            "provider": provider,
            "vendor": vendor,
            "idempotency_key": idempotency_key,
            "to": to,
            "accepted_at": iso_utc(now),
            "accepted_ts": now,
            "message_id": message_id,
            "subject": subject,
            "body": body[:BODY_LIMIT] if body else body,
            "headers": headers,
            "metadata": metadata,
            "batch": batch,
        }
        self.ledger.append(entry)
        if idempotency_key:
            # setdefault: an SMTP message to several recipients is one send under one key.
            self._dedupe.setdefault((provider, idempotency_key), entry)
        counters = self._counters_for(provider)
        counters.accepted += 1
        second = int(now)
        counters.per_second[second] = counters.per_second.get(second, 0) + 1
        if second != self._pruned_second:
            self._prune(second)
        if self.on_accept is not None:
            self.on_accept(entry)
        return entry

    def reject(self, provider: str, count: int = 1) -> None:
        self._counters_for(provider).rejected += count

    def clear_ledger(self) -> None:
        self.ledger.clear()
        self.replays.clear()
        self._dedupe.clear()
        self._counters.clear()

    def query(
        self,
        *,
        provider: str | None = None,
        idempotency_key: str | None = None,
        to: str | None = None,
        since_seq: int = 0,
        limit: int = DEFAULT_LEDGER_LIMIT,
    ) -> dict[str, Any]:
        """Ledger entries matching every given filter, in seq order, with the total and replay counts."""
        start = bisect.bisect_right(self.ledger, since_seq, key=_seq_key)
        matching = [
            entry
            for entry in self.ledger[start:]
            if (provider is None or entry["provider"] == provider)
            and (idempotency_key is None or entry["idempotency_key"] == idempotency_key)
            and (to is None or entry["to"] == to or to in entry["to"].split(", "))
        ]
        replays = sum(
            1
            for replay in self.replays
            if (provider is None or replay["provider"] == provider)
            and (idempotency_key is None or replay["idempotency_key"] == idempotency_key)
        )
        return {"count": len(matching), "entries": matching[:limit], "replays": replays}

    def stats(self, now: float) -> dict[str, Any]:
        oldest = int(now) - STATS_WINDOW_SECONDS
        return {
            "providers": {
                name: {
                    "accepted": counters.accepted,
                    "replays": counters.replays,
                    "rejected": counters.rejected,
                    "per_second": {
                        str(second): count for second, count in sorted(counters.per_second.items()) if second > oldest
                    },
                }
                for name, counters in sorted(self._counters.items())
            }
        }

    def _counters_for(self, provider: str) -> _Counters:
        counters = self._counters.get(provider)
        if counters is None:
            counters = self._counters[provider] = _Counters()
        return counters

    def _prune(self, second: int) -> None:
        # Runs once per wall-clock second that sees traffic, so the counters stay small.
        self._pruned_second = second
        oldest = second - STATS_WINDOW_SECONDS
        for counters in self._counters.values():
            stale = [s for s in counters.per_second if s <= oldest]
            for s in stale:
                del counters.per_second[s]


def iso_utc(ts: float) -> str:
    """ISO-8601 in UTC with microseconds, the ledger's timestamp format."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")

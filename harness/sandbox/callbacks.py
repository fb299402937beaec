"""The sandbox's delivery reports: after accepting a message, a vendor configured for it POSTs the report its real
counterpart would, in its own format and signed its own way, after a delay, with a configurable mix of outcomes.

    postmark ... JSON webhooks (Delivery, Bounce with Type HardBounce, Open), basic auth
    twilio ..... form status callbacks (sent, then delivered or undelivered with ErrorCode 30005), X-Twilio-Signature
    vonage ..... delivery receipts as form fields (delivered or failed), signed with `sig` (HMAC-SHA256)

The signatures are computed here from the vendors' documented rules, not with the platform's code, so a mistake
in either shows as a refused report.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)

VENDORS = ("postmark", "twilio", "vonage")
FIELDS = {"provider", "url", "delay_ms", "delivered", "bounced", "opened", "secret", "auth"}


class CallbackError(ValueError):
    """A configuration the sandbox refuses; the text is "<field>: <reason>"."""


class Callbacks:
    """Report settings per provider name, the reports in flight and what became of them."""

    def __init__(self) -> None:
        self.config: dict[str, dict[str, Any]] = {}
        self.stats: Counter = Counter()
        self.rng = random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()

    def configure(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise CallbackError("body: must be a JSON object")
        unknown = sorted(set(payload) - FIELDS)
        if unknown:
            raise CallbackError(f"{unknown[0]}: unknown field; use {', '.join(sorted(FIELDS))}")
        provider = payload.get("provider")
        if not isinstance(provider, str) or not provider:
            raise CallbackError("provider: required, the provider name as in the URL")
        if payload.get("url") is None:
            self.config.pop(provider, None)
            return self.config
        if not isinstance(payload["url"], str) or not payload["url"].startswith("http"):
            raise CallbackError("url: must be an http(s) URL")
        for name in ("delivered", "bounced", "opened"):
            value = payload.get(name, 0.0)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
                raise CallbackError(f"{name}: must be a fraction between 0 and 1")
        if payload.get("delivered", 0) + payload.get("bounced", 0) > 1:
            raise CallbackError("delivered: delivered + bounced must not exceed 1")
        delay = payload.get("delay_ms", 0)
        if not isinstance(delay, int) or isinstance(delay, bool) or delay < 0:
            raise CallbackError("delay_ms: must be a non-negative integer")
        self.config[provider] = {"delivered": 1.0, "bounced": 0.0, "opened": 0.0, **payload}
        return self.config

    def clear(self) -> None:
        self.config.clear()
        self.stats.clear()

    def schedule(self, entry: dict[str, Any]) -> None:
        """Called for each accepted message (on the sandbox's loop); reports it if its provider is configured."""
        config = self.config.get(entry["provider"])
        if config is None or entry["vendor"] not in VENDORS:
            return
        task = asyncio.get_running_loop().create_task(self._report(entry, config))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, entry: dict[str, Any], config: dict[str, Any]) -> None:
        await asyncio.sleep(config["delay_ms"] / 1000 * self.rng.uniform(0.5, 1.5))
        draw = self.rng.random()
        outcome = (
            "bounced"
            if draw < config["bounced"]
            else "delivered"
            if draw < config["bounced"] + config["delivered"]
            else None
        )
        if outcome is None:
            self.stats["silent"] += 1
            return
        opened = outcome == "delivered" and self.rng.random() < config["opened"]
        for request in _requests(entry, config, outcome, opened):
            await self._post(entry["provider"], request)

    async def _post(self, provider: str, request: dict[str, Any]) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with self._session.post(**request) as response:
                await response.read()
                self.stats[f"{provider}:{response.status}"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats[f"{provider}:error"] += 1
            logger.info("report to %s failed: %s", request["url"], exc)

    def summary(self) -> dict[str, Any]:
        return {"config": self.config, "stats": dict(self.stats), "in_flight": len(self._tasks)}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _requests(entry: dict[str, Any], config: dict[str, Any], outcome: str, opened: bool) -> list[dict[str, Any]]:
    vendor, url, now = entry["vendor"], config["url"], time.time()
    if vendor == "postmark":
        headers = {}
        if config.get("auth"):
            headers["Authorization"] = "Basic " + base64.b64encode(config["auth"].encode()).decode()
        common = {"MessageID": entry["message_id"], "ServerID": 1, "MessageStream": "outbound", "Tag": ""}
        if outcome == "bounced":
            bodies = [
                {
                    **common,
                    "RecordType": "Bounce",
                    "ID": int(uuid.uuid4().int % 10**12),
                    "Type": "HardBounce",
                    "TypeCode": 1,
                    "Name": "Hard bounce",
                    "Email": entry["to"],
                    "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
                    "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
                    "BouncedAt": _iso(now),
                }
            ]
        else:
            bodies = [
                {
                    **common,
                    "RecordType": "Delivery",
                    "Recipient": entry["to"],
                    "DeliveredAt": _iso(now),
                    "Details": "Test delivery",
                }
            ]
            if opened:
                bodies.append(
                    {
                        **common,
                        "RecordType": "Open",
                        "Recipient": entry["to"],
                        "ReceivedAt": _iso(now + 1),
                        "FirstOpen": True,
                    }
                )
        return [{"url": url, "json": body, "headers": headers} for body in bodies]
    if vendor == "twilio":
        statuses = ["sent", "delivered" if outcome == "delivered" else "undelivered"]
        requests = []
        for status in statuses:
            params = {
                "AccountSid": "ACsandbox",
                "ApiVersion": "2010-04-01",
                "MessageSid": entry["message_id"],
                "MessageStatus": status,
                "SmsSid": entry["message_id"],
                "SmsStatus": status,
                "To": entry["to"],
            }
            if status == "undelivered":
                params["ErrorCode"] = "30005"
            # Twilio's rule: the URL, then each parameter's name and value sorted by name; HMAC-SHA1, base64.
            signed = url + "".join(name + params[name] for name in sorted(params))
            signature = base64.b64encode(
                hmac.new(config.get("secret", "").encode(), signed.encode(), hashlib.sha1).digest()
            )
            requests.append({"url": url, "data": params, "headers": {"X-Twilio-Signature": signature.decode()}})
        return requests
    # vonage
    params = {
        "msisdn": entry["to"].lstrip("+"),
        "to": "Notify",
        "network-code": "12345",
        "messageId": entry["message_id"],
        "price": "0.00500000",
        "status": "delivered" if outcome == "delivered" else "failed",
        "scts": time.strftime("%y%m%d%H%M", time.gmtime(now)),
        "err-code": "0" if outcome == "delivered" else "1",
        "api-key": "sandbox-key",
        "message-timestamp": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)),
        "timestamp": str(int(now)),
        "nonce": str(uuid.uuid4()),
    }
    # Vonage's signed-webhook rule: "&name=value" sorted by name, "&" and "=" in values made "_"; HMAC-SHA256, hex.
    signed = "".join("&" + name + "=" + params[name].replace("&", "_").replace("=", "_") for name in sorted(params))
    params["sig"] = hmac.new(config.get("secret", "").encode(), signed.encode(), hashlib.sha256).hexdigest().upper()
    return [{"url": url, "data": params}]

"""Mask personal data (e-mail addresses, phone numbers, push tokens) in job data before an operator sees it.

Masking is for display only: the stored arguments stay whole, so a replay sends the original message.
"""

import re
import uuid
from typing import Any

#: An e-mail address anywhere in a string; the domain is kept, it helps triage and identifies nobody.
EMAIL = re.compile(r"(?<![\w.%+-])([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@((?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,})")
#: An E.164 number anywhere in a string (6 to 15 digits, so "+1" in prose is left alone).
E164 = re.compile(r"(?<![\w+])\+([1-9]\d{2})(\d{1,10})(\d{2})(?!\d)")
#: A whole value that looks like an opaque device token (FCM, APNs hex, Expo ids).
TOKEN = re.compile(r"[A-Za-z0-9_:-]{16,}")


def mask_personal_data(value: Any) -> Any:
    """A copy of `value` with personal data masked; dicts and lists are walked, keys are kept as they are.

    ``ada@example.com`` -> ``a***@example.com``; ``+14155550199`` -> ``+141******99``;
    a token of 16+ characters -> its first 4 characters and ``…``.  UUIDs (ids of rows,
    idempotency keys) and anything that is not a string are left alone.
    """
    if isinstance(value, dict):
        return {key: mask_personal_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_personal_data(item) for item in value]
    if isinstance(value, str):
        return _mask_string(value)
    return value


def mask_text(text: str) -> str:
    """Addresses and phone numbers anywhere in `text` masked (prose: long words are left alone)."""
    masked = EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    return E164.sub(lambda m: f"+{m.group(1)}{'*' * len(m.group(2))}{m.group(3)}", masked)


def _mask_string(text: str) -> str:
    if _is_uuid(text):
        return text
    masked = mask_text(text)
    # Only a whole value is taken for a token: inside prose, long words are identifiers, not tokens.
    if masked == text and TOKEN.fullmatch(text):
        return f"{text[:4]}…"
    return masked


def _is_uuid(text: str) -> bool:
    if len(text) not in (32, 36):
        return False
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True

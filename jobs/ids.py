"""Time-ordered ids (UUID version 7, RFC 9562): the first 48 bits are the moment in milliseconds, so ids grow with
time, a table's index takes new ones at its right edge, and a range of ids is a range of time (what the
notifications' partitions are cut by)."""

import os
import time
import uuid
from datetime import UTC, datetime

#: The lowest and highest id a millisecond can have, as its 48 leading bits followed by all zeros or all ones.
_TAIL_BITS = 80


def uuid7(moment: datetime | None = None) -> uuid.UUID:
    """A new id: this millisecond (or `moment`'s), version 7, the RFC's variant, 74 random bits."""
    ms = int(moment.timestamp() * 1000) if moment is not None else time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << _TAIL_BITS
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    return uuid.UUID(int=value)


def uuid7_floor(moment: datetime) -> uuid.UUID:
    """The lowest id of `moment`'s millisecond: every id made at or after it is at least this."""
    ms = int(moment.timestamp() * 1000)
    return uuid.UUID(int=ms << _TAIL_BITS)


def uuid7_time(value: uuid.UUID) -> datetime:
    """When a version-7 id was made (to the millisecond)."""
    return datetime.fromtimestamp((value.int >> _TAIL_BITS) / 1000, tz=UTC)

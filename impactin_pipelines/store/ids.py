"""Outbox row ids: UUID version 7 (RFC 9562), drawn in time order.

Rows staged together are claimed together, and with time-ordered ids they also sit together in the primary key:
staging appends to the key's right edge, and a claim rewrites a few of its pages instead of one page per row. On
PostgreSQL the warehouse draws them itself (`impactin_new_row_id()`, sql/0013, the same layout)."""

import os
import time
import uuid

_MS_BITS = (1 << 48) - 1
_RAND_B_BITS = (1 << 62) - 1


def new_row_id() -> str:
    """A UUIDv7 as text: 48 bits of Unix milliseconds, the version, 74 random bits and the variant."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 random bits: the top 12 and the bottom 62 are used
    value = (ms & _MS_BITS) << 80 | 0x7 << 76 | (rand >> 68) << 64 | 0b10 << 62 | (rand & _RAND_B_BITS)
    return str(uuid.UUID(int=value))

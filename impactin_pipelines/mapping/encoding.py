"""One serialisation for every JSON provider: the bytes we sign are the bytes we send and store."""

import json
from decimal import Decimal
from typing import Any


def json_number(value: Decimal) -> float | int:
    """Keep the contract's '5.0' shape: a JSON number, never a string."""
    return float(value)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)  # built once: hot path


def encode_json(payload: Any) -> bytes:
    """Compact like JSON.stringify (what Benevity's signature formula names), UTF-8, no NaN."""
    return _ENCODER.encode(payload).encode("utf-8")

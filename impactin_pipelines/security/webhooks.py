"""Signatures of provider webhook callbacks: HMAC-SHA256, in the Stripe style.

One header, `X-Impactin-Signature: t=<unix seconds>,v1=<hex>`, where `<hex>` is HMAC-SHA256 with the provider's
webhook secret over `<t>.` followed by the raw body bytes. Signing the timestamp with the body means neither can be
swapped without the secret; one header carrying both means a proxy cannot drop one and keep the other; several
`v1=` entries are allowed, so a provider can sign with an old and a new secret while a secret is rotated. The
timestamp must be within the tolerance of our clock (either side), so a captured callback is only good for that
long; inside it, the store refuses a callback id it has already seen with the same timestamp (a replay).

Pure functions: no I/O, no logging; errors never contain a secret or a signature.
"""

import hashlib
import hmac
from collections.abc import Sequence

SIGNATURE_HEADER = "X-Impactin-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300.0


class SignatureError(ValueError):
    """Why a callback is not authentic: missing, malformed, stale or wrong. The message is safe to log."""


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The header value a provider sends with `body` at `timestamp`."""
    return f"t={timestamp},{SCHEME}={_digest(secret, timestamp, body)}"


def parse_header(header: str | None) -> tuple[int, list[str]]:
    """(timestamp, candidate signatures) of a header value; SignatureError when absent or malformed."""
    if not header or len(header) > 1024:
        raise SignatureError(f"{SIGNATURE_HEADER} is missing")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"{SIGNATURE_HEADER} is malformed: expected t=<unix seconds>,{SCHEME}=<hex>")
        if name == "t":
            if not value.isdigit() or len(value) > 12:
                raise SignatureError(f"{SIGNATURE_HEADER} t must be unix seconds")
            timestamp = int(value)
        elif name == SCHEME:
            signatures.append(value.strip().lower())
    if timestamp is None or not signatures:
        raise SignatureError(f"{SIGNATURE_HEADER} needs t=<unix seconds> and {SCHEME}=<hex>")
    return timestamp, signatures


def verify(header: str | None, body: bytes, secrets: Sequence[str], *, now: float, tolerance_s: float) -> int:
    """The signed timestamp of an authentic callback. Every (secret, signature) pair is compared in constant time
    (no early exit that would tell which one came close); SignatureError otherwise."""
    timestamp, signatures = parse_header(header)
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"{SIGNATURE_HEADER} timestamp is outside the {tolerance_s:g} s window")
    usable = [s for s in secrets if s]
    if not usable:
        raise SignatureError("no webhook secret is configured for this provider")
    matched = False
    for secret in usable:
        expected = _digest(secret, timestamp, body).encode()
        for candidate in signatures:
            matched |= hmac.compare_digest(expected, candidate.encode())
    if not matched:
        raise SignatureError(f"{SIGNATURE_HEADER} does not match the body")
    return timestamp

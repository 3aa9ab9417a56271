"""Stable identities: the same delivery gets the same key on every run, replay and machine."""

import hashlib
import uuid

# Fixed forever: changing it would give every delivery a new idempotency key and re-send everything.
DELIVERY_NAMESPACE = uuid.UUID("6f1d3a52-9c1e-5b7e-8f43-1f0e2c9a7d10")


_NAMESPACE_BYTES = DELIVERY_NAMESPACE.bytes


def delivery_id_for(company_id: str, provider: str, event_id: str) -> str:
    """UUIDv5 of (company, provider, event): the X-Idempotency-Key. Computed as RFC 4122 §4.3 says (what
    `uuid.uuid5` does) without building UUID objects: this runs once per staged event."""
    name = "\x1f".join((company_id, provider, event_id)).encode("utf-8")
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# Event ids submitted with a company's API key live under `api/<company>/`, so they never collide with the
# platform's ids or another company's (company ids cannot contain "/"). The gate keeps the namespace honest.
SCOPED_ID_PREFIX = "api/"


def scoped_event_id(company_id: str, event_id: str) -> str:
    """Where an event id submitted by a caller scoped to `company_id` is stored: its company's own namespace."""
    return f"{SCOPED_ID_PREFIX}{company_id}/{event_id}"


def payload_hash(body: bytes) -> str:
    """SHA-256 of the exact bytes sent, so the audit log can prove what went out."""
    return hashlib.sha256(body).hexdigest()

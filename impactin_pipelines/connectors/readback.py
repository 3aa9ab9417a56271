"""Read-back: what a provider holds for a period, for reconciliation (services/reconcile).

The integration guide documents no list endpoint for any of the three providers; a real read-back would use each
provider's own list or export API. The connectors implement `read_back` against the sandbox fakes' `GET` on the
submission path (`?since=&until=` in ISO 8601, answering `{"items": [{"idempotency_key", "event_id", "id",
"received_at", "payload_hash"}]}`), which is the shape such an API would be adapted to. `payload_hash` is sha256 of
the held document in our serialisation (mapping/encoding), or null when the provider holds no document we can
compare (Workday SOAP reports).
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import requests

from impactin_pipelines.security.redaction import Redactor

MAX_ITEMS = 1_000_000


class ReadBackError(Exception):
    """The provider could not be asked (network, authentication, an answer we cannot read); secrets scrubbed."""


@dataclass(frozen=True)
class Period:
    """[since, until), aware UTC datetimes."""

    since: datetime
    until: datetime


@dataclass(frozen=True)
class HeldRecord:
    idempotency_key: str | None
    event_id: str | None
    payload_hash: str | None
    reference: str | None = None


@runtime_checkable
class ReadsBack(Protocol):
    """A connector that can list what the provider holds."""

    def read_back(self, period: Period) -> list[HeldRecord]: ...


def _item(raw: Any) -> HeldRecord:
    if not isinstance(raw, dict):
        raise ReadBackError(f"a read-back item is not an object: {str(raw)[:80]!r}")

    def text(name: str) -> str | None:
        value = raw.get(name)
        return value if isinstance(value, str) and value else None

    return HeldRecord(text("idempotency_key"), text("event_id"), text("payload_hash"), text("id"))


def fetch_held(
    session: requests.Session,
    url: str,
    headers: dict[str, str],
    period: Period,
    *,
    timeout: tuple[float, float],
    redactor: Redactor,
) -> list[HeldRecord]:
    """One GET of the provider's list for the period; ReadBackError on anything but a 200 with items."""
    params = {"since": period.since.isoformat(), "until": period.until.isoformat()}
    try:
        response = session.get(url, params=params, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise ReadBackError(redactor.scrub(f"read-back request failed: {type(exc).__name__}: {exc}")) from None
    if response.status_code != 200:
        excerpt = redactor.scrub(response.text[:300])
        raise ReadBackError(f"read-back answered HTTP {response.status_code}: {excerpt}")
    try:
        items = response.json()["items"]
    except (ValueError, KeyError, TypeError):
        raise ReadBackError("read-back answer is not {'items': [...]}") from None
    if not isinstance(items, list) or len(items) > MAX_ITEMS:
        raise ReadBackError("read-back items must be a list")
    return [_item(i) for i in items]

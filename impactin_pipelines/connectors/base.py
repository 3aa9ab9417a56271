"""The connector interface and the values that cross it."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

import requests
from sqlalchemy.engine import Engine

from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import AttemptOutcome, DeliveryStatus
from impactin_pipelines.security.crypto import KeyRing
from impactin_pipelines.security.redaction import MASK
from impactin_pipelines.settings import DeliverySettings


@dataclass(frozen=True)
class OutboundDelivery:
    """One outbox row to send. `delivery_id` is the idempotency key; `payload` is sent exactly as stored (empty
    when no payload could be built: such a row is settled as an invalid event, never sent).

    A row claimed for delivery also carries its row `id`, stored status and counts, and `claim_version` (with the
    claimant, the claim's fencing token); a dry run or a connectivity check leaves them at their defaults."""

    delivery_id: str
    company_id: str
    provider: str
    event_id: str
    payload: str
    id: str = ""
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempt_count: int = 0
    run_count: int = 0
    claim_version: int = 0


@dataclass(frozen=True)
class PreparedRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    secret_headers: frozenset[str] = frozenset()

    def masked(self) -> dict[str, object]:
        """For dry runs and audit: the request with every secret header masked."""
        return {
            "method": self.method,
            "url": self.url,
            "headers": {k: (MASK if k.lower() in self.secret_headers else v) for k, v in self.headers.items()},
            "body": self.body.decode("utf-8", "replace"),
        }


@dataclass(frozen=True)
class AttemptResult:
    """One exchange with a provider, classified. Text fields are already scrubbed of secrets."""

    outcome: AttemptOutcome
    started_at: datetime
    finished_at: datetime
    http_status: int | None = None
    error: str | None = None
    response_body: str | None = None
    retry_after_s: float | None = None
    request_body: str | None = None  # set when what went out differs from the stored payload (SOAP)
    provider_reference: str | None = None  # the id the provider gave what it stored, when its reply names one
    token_stale: bool = False  # AUTH_EXPIRED only: the refused token had expired or been replaced before the answer


@dataclass(frozen=True)
class Deferral:
    """Not sent, and no attempt: the quota `key` (a provider credential's bucket, never the credential itself) has
    no slot for `ready_in_s`. The caller holds the row and offers it again then, doing other work meanwhile;
    `spacing_s` is the quota's interval between two requests, for guessing when the next row of the same key may go.
    Holding it longer than the connector allows turns the next offer into a RATE_LIMITED attempt."""

    key: str
    ready_in_s: float
    spacing_s: float


@runtime_checkable
class DeferringConnector(Protocol):
    """A connector with a quota it can check without waiting (Goodera)."""

    @property
    def quota_key(self) -> str:
        """The bucket this connector's requests draw on (shared by every connector with the same credential)."""
        ...

    @property
    def quota_spacing_s(self) -> float:
        """The interval the quota keeps between two requests."""
        ...

    def try_send(self, delivery: OutboundDelivery, waited_s: float = 0.0) -> AttemptResult | Deferral:
        """`send`, unless the quota has no slot now: then a Deferral and nothing sent. `waited_s`: how long this
        row has been held for the quota so far; past the connector's max wait it is settled as rate limited."""
        ...


_defers_by_class: dict[type, bool] = {}


def defers_for_quota(connector: object) -> bool:
    """`isinstance(connector, DeferringConnector)`, answered once per class: a runtime protocol check inspects every
    member on each call, and the send path asks it for every row."""
    cls = type(connector)
    found = _defers_by_class.get(cls)
    if found is None:
        found = _defers_by_class[cls] = isinstance(connector, DeferringConnector)
    return found


@dataclass(frozen=True)
class ConnectivityResult:
    """`ok`: authentication was proven. `inconclusive`: the provider answered, but in a way that cannot tell good
    credentials from bad ones (`ok` is then False: nothing was proven)."""

    provider: str
    company_id: str
    ok: bool
    detail: str
    extra: Mapping[str, object] = field(default_factory=dict)
    inconclusive: bool = False

    @property
    def verdict(self) -> str:
        """`ok`, `not proven` or `failed`."""
        return "ok" if self.ok else "not proven" if self.inconclusive else "failed"


class Connector(Protocol):
    provider: Provider

    def prepare(self, delivery: OutboundDelivery) -> PreparedRequest:
        """The request `send` would make, for dry runs (secrets only in `secret_headers`)."""
        ...

    def send(self, delivery: OutboundDelivery) -> AttemptResult:
        """Exactly one exchange with the provider; never raises for provider or network trouble."""
        ...

    def check(self) -> ConnectivityResult:
        """Can this configuration authenticate? Sends no impact data."""
        ...

    def close(self) -> None: ...


@dataclass
class ConnectorContext:
    """What a connector builder may use: the run's shared pieces, scoped to one company."""

    company_id: str
    engine: Engine
    settings: DeliverySettings
    session: requests.Session
    keyring: Callable[[], KeyRing]

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.settings.connect_timeout_s, self.settings.read_timeout_s)

"""The circuit breaker per provider credential, as a pure state machine (storage: store/circuits.py).

closed: requests go out; consecutive transient failures are counted (`IMPACTIN_CIRCUIT_FAILURES`, 0 = off).
open: the count was reached (or a probe failed): nothing is sent until the cool-down ends. The cool-down starts
  at `IMPACTIN_CIRCUIT_COOLDOWN_S` and doubles with each trip that follows without a success, up to
  `IMPACTIN_CIRCUIT_MAX_COOLDOWN_S`.
half_open: the cool-down is over and one sender holds the probe: its request decides (success closes, a transient
  failure reopens with the doubled cool-down). Other senders hold back until then; a probe whose sender vanished
  lapses and the next sender takes it.
paused: an operator's maintenance window (`impactin providers pause`), open until resumed.

A held row is not sent and spends no attempt: it stays due for a later run. The provider having answered at all
(a permanent refusal included) proves it is up, so only transient failures (timeouts, connection errors, 5xx) count;
a rate limit or an expired token is neither.
"""

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from impactin_pipelines.connectors.ratelimit import limit_key
from impactin_pipelines.domain.statuses import AttemptOutcome
from impactin_pipelines.settings import CircuitSettings

ALL_COMPANIES = "*"  # the scope of an operator's pause of a whole provider


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    PAUSED = "paused"


# the metric's values
_CODES = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2, CircuitState.PAUSED: 3}


class Admission(StrEnum):
    SEND = "send"  # closed: send as usual
    PROBE = "probe"  # the cool-down is over: this sender may take the probe (the store decides who gets it)
    HOLD = "hold"  # open, probing elsewhere, or paused: do not send


def credential_scope(provider: str, credential_key: str) -> str:
    """The breaker's key for a credential: the rate limiter's key (provider and a short hash, never the secret)."""
    return f"credential:{limit_key(provider, credential_key)}"


def company_scope(company_id: str) -> str:
    """The scope of an operator's pause of one company's deliveries to a provider."""
    return f"company:{company_id}"


@dataclass(frozen=True)
class Circuit:
    """One breaker (or one operator pause): `scope` is `credential:<key>`, `company:<id>` or `*`."""

    provider: str
    scope: str
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0  # consecutive transient failures while closed
    trips: int = 0  # openings since the last success: the cool-down doubles with each
    open_until: datetime | None = None
    probe_until: datetime | None = None  # half-open: when the current probe lapses
    company_id: str | None = None  # the company whose delivery last moved it (a credential may serve several)
    last_error: str | None = None
    updated_at: datetime | None = None

    @property
    def code(self) -> int:
        return _CODES[self.state]

    def admit(self, now: datetime) -> Admission:
        match self.state:
            case CircuitState.CLOSED:
                return Admission.SEND
            case CircuitState.OPEN:
                return Admission.PROBE if self.open_until is None or now >= self.open_until else Admission.HOLD
            case CircuitState.HALF_OPEN:
                lapsed = self.probe_until is None or now >= self.probe_until
                return Admission.PROBE if lapsed else Admission.HOLD
        return Admission.HOLD

    def probing(self, now: datetime, probe_s: float) -> "Circuit":
        """This sender took the probe."""
        return replace(self, state=CircuitState.HALF_OPEN, probe_until=now + timedelta(seconds=probe_s), updated_at=now)

    def after_failure(
        self,
        now: datetime,
        settings: CircuitSettings,
        *,
        probe: bool = False,
        company_id: str | None = None,
        error: str | None = None,
    ) -> "Circuit":
        """A transient failure: counted while closed, opening at the threshold; the probe's reopens it for twice as
        long. Any other (a request already in flight when it opened) changes nothing."""
        if settings.failures == 0 or self.state is CircuitState.PAUSED:
            return self
        if self.state is not CircuitState.CLOSED and not (probe and self.state is CircuitState.HALF_OPEN):
            return self
        failures = self.failures + 1
        if self.state is CircuitState.HALF_OPEN or failures >= settings.failures:
            trips = self.trips + 1
            until = now + timedelta(seconds=cooldown_s(trips, settings))
            return replace(
                self,
                state=CircuitState.OPEN,
                failures=failures,
                trips=trips,
                open_until=until,
                probe_until=None,
                company_id=company_id,
                last_error=error,
                updated_at=now,
            )
        return replace(self, failures=failures, company_id=company_id, last_error=error, updated_at=now)

    def probe_undecided(self, now: datetime) -> "Circuit":
        """The probe's answer proved nothing (a rate limit, an expired token): the next sender probes at once."""
        if self.state is not CircuitState.HALF_OPEN:
            return self
        return replace(self, state=CircuitState.OPEN, open_until=now, probe_until=None, updated_at=now)

    def after_success(self, now: datetime) -> "Circuit":
        """The provider answered: close (a pause stays until an operator resumes)."""
        if self.state is CircuitState.PAUSED or self.clean:
            return self
        return replace(
            self, state=CircuitState.CLOSED, failures=0, trips=0, open_until=None, probe_until=None, updated_at=now
        )

    @property
    def clean(self) -> bool:
        """Closed with nothing counted: a success changes nothing worth writing."""
        return self.state is CircuitState.CLOSED and self.failures == 0 and self.trips == 0


def cooldown_s(trips: int, settings: CircuitSettings) -> float:
    """The cool-down of the `trips`-th opening in a row: the base, doubled each time, capped."""
    return min(settings.cooldown_s * 2 ** max(0, trips - 1), settings.max_cooldown_s)


def verdict(outcome: AttemptOutcome) -> bool | None:
    """True: the provider is up (it answered). False: a transient failure, counted. None: says nothing (a rate limit,
    an expired token, our own configuration)."""
    if outcome in (AttemptOutcome.SUCCESS, AttemptOutcome.PERMANENT):
        return True
    if outcome is AttemptOutcome.RETRYABLE:
        return False
    return None


def provider_state(circuits: Iterable[Circuit], provider: str) -> CircuitState:
    """A provider's state at a glance: its worst breaker or pause (closed when none is stored)."""
    found = [x.state for x in circuits if x.provider == provider]
    return max(found, key=_CODES.__getitem__, default=CircuitState.CLOSED)


def describe(circuit: Circuit, now: datetime) -> str:
    """One line for people: what it does to sending, and until when."""
    match circuit.state:
        case CircuitState.PAUSED:
            return "paused by an operator until resumed" + (f" ({circuit.last_error})" if circuit.last_error else "")
        case CircuitState.OPEN:
            left = (circuit.open_until - now).total_seconds() if circuit.open_until else 0.0
            when = f"probe in {left:.0f} s" if left > 0 else "probe due"
            return f"open after {circuit.failures} transient failure(s), {when}: {circuit.last_error or ''}".rstrip(
                ": "
            )
        case CircuitState.HALF_OPEN:
            return "half-open: one probe request in flight"
    if circuit.failures:
        return f"closed, {circuit.failures} transient failure(s) in a row: {circuit.last_error or ''}".rstrip(": ")
    return "closed"

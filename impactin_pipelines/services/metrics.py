"""Prometheus metrics, computed from the warehouse at scrape time: they cover every run in every process (nightly
runs, re-runs, the API's deliver-now), not only what the scraped process did itself.

The guide's three, with its names and labels, plus the queue, its oldest row and the circuit breakers:

- `impact_in_deliveries_total{provider,status}`: outbox rows per current status (a gauge: a row moves from
  pending to success; the guide's name is kept);
- `impact_in_delivery_duration_seconds{provider}`: histogram of every request's duration (the attempt log);
- `impact_in_retry_count{provider}`: requests beyond each row's first (attempts - rows attempted);
- `impact_in_queue_depth{provider}`, `impact_in_oldest_pending_age_seconds{provider}`: rows pending or retrying,
  and the age of the oldest of them;
- `impact_in_circuit_state{provider}` (the worst of its breakers) and `impact_in_circuit_breaker_state{provider,
  scope}` (each breaker and operator pause): 0 closed, 1 half-open, 2 open, 3 paused.

A scrape reads the queue by the claims' partial index, the attempts since the previous scrape (DurationTally) and,
at most every so often, the totals over the whole outbox (OutboxTotals); docs/operations.md#metrics has the costs.
"""

import math
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.circuit import Circuit, provider_state
from impactin_pipelines.domain.statuses import DeliveryStatus
from impactin_pipelines.store.circuits import snapshot
from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.outbox import status_in, utcnow
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.schema import impact_delivery_attempts as a

# seconds; a request waits at most connect (5 s) + read (30 s) by default
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class ProviderFigures:
    by_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DeliveryStatus, 0))
    retries: int = 0
    queue: int = 0
    oldest_pending: datetime | None = None
    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS_S))  # not cumulative
    requests: int = 0
    duration_sum_s: float = 0.0


@dataclass
class Figures:
    """What one scrape read from the warehouse."""

    at: datetime
    providers: dict[str, ProviderFigures]
    circuits: list[Circuit]

    def oldest_age_s(self, provider: str) -> float:
        oldest = self.providers[provider].oldest_pending
        return max(0.0, (self.at - oldest).total_seconds()) if oldest is not None else 0.0


class DurationTally:
    """The duration histogram, read incrementally: attempt rows are never updated, so requests that started before
    `SETTLED` ago are summed once and kept, and each scrape reads only the ones since (by the started_at index)
    plus the last few minutes afresh. A scrape costs the new attempts, not the whole attempt log (the first one
    reads it all). An attempt row is written when its request ends, within the HTTP timeouts: long before
    `SETTLED` has passed."""

    SETTLED = timedelta(minutes=5)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._upto: datetime | None = None
        self._kept: dict[str, _Durations] = {}

    def read(self, conn: sa.Connection, now: datetime) -> dict[str, "_Durations"]:
        with self._lock:
            upto = now - self.SETTLED
            if self._upto is None or upto > self._upto:
                for provider, found in _durations(conn, self._upto, upto).items():
                    self._kept.setdefault(provider, _Durations()).add(found)
                self._upto = upto
            result = {provider: _Durations().add(kept) for provider, kept in self._kept.items()}
            for provider, fresh in _durations(conn, self._upto, None).items():
                result.setdefault(provider, _Durations()).add(fresh)
            return result


@dataclass
class _Durations:
    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS_S))  # cumulative
    requests: int = 0
    sum_s: float = 0.0

    def add(self, other: "_Durations") -> "_Durations":
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.requests += other.requests
        self.sum_s += other.sum_s
        return self


def _durations(conn: sa.Connection, since: datetime | None, until: datetime | None) -> dict[str, _Durations]:
    """Per provider: the requests that started in [since, until)."""
    bucket_sums = [sa.func.sum(sa.case((a.c.duration_ms <= int(le * 1000), 1), else_=0)) for le in DURATION_BUCKETS_S]
    stmt = (
        sa.select(d.c.provider, sa.func.count(), sa.func.sum(a.c.duration_ms), *bucket_sums)
        .select_from(a.join(d, d.c.delivery_id == a.c.delivery_id))
        .group_by(d.c.provider)
    )
    if since is not None:
        stmt = stmt.where(a.c.started_at >= since)
    if until is not None:
        stmt = stmt.where(a.c.started_at < until)
    found = {}
    for provider, count, total_ms, *cumulative in conn.execute(stmt):
        found[provider] = _Durations([int(n or 0) for n in cumulative], int(count), float(total_ms or 0) / 1000)
    return found


class OutboxTotals:
    """The outbox per provider and status: the one figure that reads every row (a million rows take a few hundred
    milliseconds). Re-read at most every `SHARE` x the time its last read took (capped at `MAX_AGE_S`), so scrapes
    spend at most ~1/SHARE of their time on it however often they come; the queue and its oldest row are read on
    every scrape (the claims' partial index answers them in milliseconds)."""

    SHARE = 20
    MAX_AGE_S = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: list[tuple[str, str, int, int]] = []
        self._fresh_until = -math.inf

    def read(self, conn: sa.Connection) -> list[tuple[str, str, int, int]]:
        with self._lock:
            if time.monotonic() >= self._fresh_until:
                started = time.monotonic()
                self._rows = _outbox_totals(conn)
                took = time.monotonic() - started
                self._fresh_until = time.monotonic() + min(self.SHARE * took, self.MAX_AGE_S)
            return self._rows


def _outbox_totals(conn: sa.Connection) -> list[tuple[str, str, int, int]]:
    """(provider, status, rows, retries) for every pair present."""
    retries = sa.func.sum(sa.case((d.c.attempt_count > 1, d.c.attempt_count - 1), else_=0))
    stmt = sa.select(d.c.provider, d.c.status, sa.func.count(), retries).group_by(d.c.provider, d.c.status)
    return [(p, st, int(n), int(r or 0)) for p, st, n, r in conn.execute(stmt)]


def read_figures(
    engine: Engine,
    providers: Iterable[str],
    tally: DurationTally | None = None,
    totals: OutboxTotals | None = None,
    *,
    durations: bool = True,
) -> Figures:
    """Every figure, read now. A scraper passes the same `tally` and `totals` each time (they keep what need not be
    read again); `durations=False` leaves the attempt log alone (the histogram stays empty)."""
    found = {p: ProviderFigures() for p in providers}
    claimable = (DeliveryStatus.PENDING, DeliveryStatus.RETRYING)
    # count and min over the claimable rows: the partial index of the claims (provider, created_at, id) answers it
    queue = (
        sa.select(d.c.provider, sa.func.count(), sa.func.min(d.c.created_at))
        .where(status_in(claimable))
        .group_by(d.c.provider)
    )
    now = utcnow()
    with read_connection(engine) as conn:
        for provider, status, count, retry_sum in (totals or OutboxTotals()).read(conn):
            figures = found.setdefault(provider, ProviderFigures())
            figures.by_status[status] = count
            figures.retries += retry_sum
        for provider, count, first in conn.execute(queue):
            figures = found.setdefault(provider, ProviderFigures())
            figures.queue, figures.oldest_pending = int(count), _aware(first)
        for provider, tallied in (tally or DurationTally()).read(conn, now).items() if durations else ():
            figures = found.setdefault(provider, ProviderFigures())
            figures.requests, figures.duration_sum_s, figures.buckets = tallied.requests, tallied.sum_s, tallied.buckets
    return Figures(now, found, snapshot(engine))


def _aware(value: object) -> datetime | None:
    """min() over a column loses its type on SQLite (text comes back): read it as the column would."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if not isinstance(moment, datetime):
        raise TypeError(f"created_at came back as {type(value).__name__}")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def metric_families(figures: Figures) -> Iterator[Metric]:
    deliveries = GaugeMetricFamily(
        "impact_in_deliveries_total",
        "Deliveries (outbox rows) per provider and current status.",
        labels=["provider", "status"],
    )
    retries = GaugeMetricFamily(
        "impact_in_retry_count",
        "Requests sent beyond each delivery's first (retries and re-runs).",
        labels=["provider"],
    )
    queue = GaugeMetricFamily("impact_in_queue_depth", "Deliveries pending or retrying.", labels=["provider"])
    oldest = GaugeMetricFamily(
        "impact_in_oldest_pending_age_seconds",
        "Age of the oldest delivery pending or retrying (0 when none is).",
        labels=["provider"],
    )
    duration = HistogramMetricFamily(
        "impact_in_delivery_duration_seconds", "Duration of each request to the provider.", labels=["provider"]
    )
    circuit = GaugeMetricFamily(
        "impact_in_circuit_state",
        "The provider's worst circuit breaker or pause: 0 closed, 1 half-open, 2 open, 3 paused.",
        labels=["provider"],
    )
    breakers = GaugeMetricFamily(
        "impact_in_circuit_breaker_state",
        "Each circuit breaker (scope credential:<key>) and operator pause (scope company:<id> or *): "
        "0 closed, 1 half-open, 2 open, 3 paused.",
        labels=["provider", "scope"],
    )
    codes = {"closed": 0, "half_open": 1, "open": 2, "paused": 3}
    for provider, f in sorted(figures.providers.items()):
        for status, count in f.by_status.items():
            deliveries.add_metric([provider, str(status)], count)
        retries.add_metric([provider], f.retries)
        queue.add_metric([provider], f.queue)
        oldest.add_metric([provider], figures.oldest_age_s(provider))
        cumulative = [(_le(le), float(n)) for le, n in zip(DURATION_BUCKETS_S, f.buckets, strict=True)]
        duration.add_metric([provider], [*cumulative, ("+Inf", float(f.requests))], sum_value=f.duration_sum_s)
        circuit.add_metric([provider], codes[provider_state(figures.circuits, provider).value])
    for x in figures.circuits:
        breakers.add_metric([x.provider, x.scope], codes[x.state.value])
    yield from (deliveries, duration, retries, queue, oldest, circuit, breakers)


def _le(value: float) -> str:
    return repr(float(value))


class WarehouseCollector(Collector):
    """A prometheus-client collector reading the warehouse on each collect (each scrape)."""

    def __init__(self, engine: Engine, providers: Iterable[str] | None = None) -> None:
        self.engine = engine
        self.providers = providers
        self.tally = DurationTally()
        self.totals = OutboxTotals()

    def collect(self) -> Iterator[Metric]:
        from impactin_pipelines.providers import provider_names

        names = self.providers or provider_names()
        yield from metric_families(read_figures(self.engine, names, self.tally, self.totals))


class MetricsExposition:
    """What `GET /metrics` serves: one registry and one collector per app, so the tally lives between scrapes."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(WarehouseCollector(engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def metrics_metadata(engine: Engine) -> dict[str, float | int | str]:
    """The metrics as flat metadata under stable keys (the `delivery_stats` asset shows and plots them)."""
    from impactin_pipelines.providers import provider_names

    figures = read_figures(engine, provider_names(), durations=False)  # the stats have their own latencies
    values: dict[str, float | int | str] = {}
    for provider, f in sorted(figures.providers.items()):
        values[f"{provider}_queue_depth"] = f.queue
        values[f"{provider}_oldest_pending_age_s"] = round(figures.oldest_age_s(provider), 1)
        values[f"{provider}_retries"] = f.retries
        values[f"{provider}_circuit"] = provider_state(figures.circuits, provider).value
    return values

"""Extract: turn a company's undelivered events into outbox rows for one provider.

Mapping happens here, once: the row stores the exact payload bytes every attempt and replay will send (and sign).
An event that cannot be mapped becomes a `failed/invalid_event` row with the field and value in `last_error`,
so nothing is lost and the good events around it go out.

A company whose id cannot be a Dagster partition key never gets a partition, so no partition's extraction reaches
it: `quarantine_unpartitionable` gives its events their `failed/invalid_event` rows instead (naming `company_id`),
so they show in the ledger, the statistics and `deliveries list` like any other bad event.
"""

import itertools
import multiprocessing
import os
import pickle
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.config import parse_settings
from impactin_pipelines.domain.companies import is_valid_company_id
from impactin_pipelines.domain.errors import ConfigError, InvalidEvent
from impactin_pipelines.domain.events import is_utf8_text, parse_event
from impactin_pipelines.domain.identity import delivery_id_for, payload_hash
from impactin_pipelines.domain.providers import PROVIDERS, Provider
from impactin_pipelines.domain.statuses import DeliveryStatus, ErrorKind
from impactin_pipelines.mapping.encoding import encode_json
from impactin_pipelines.mapping.payloads import payload_builder
from impactin_pipelines.providers import PayloadBuilder
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.store import source
from impactin_pipelines.store.engine import make_engine
from impactin_pipelines.store.outbox import STALE_ROWS, NewDelivery, Outbox


@dataclass
class ExtractReport:
    company_id: str
    provider: str
    enabled: bool = True
    new_rows: int = 0
    invalid: int = 0
    error: str | None = None


class _CompanySettings(Mapping[str, Any]):
    """`company_integrations.settings`, parsed when a provider first reads it: a provider whose documents do not
    depend on them extracts even when they are broken (delivery then marks the rows `config`)."""

    def __init__(self, raw: Any, company_id: str, provider: str) -> None:
        self._raw, self._company_id, self._provider = raw, company_id, provider
        self._parsed: dict[str, Any] | None = None

    def _settings(self) -> dict[str, Any]:
        if self._parsed is None:
            self._parsed = parse_settings(self._raw, company_id=self._company_id, provider=self._provider)
        return self._parsed

    def __getitem__(self, key: str) -> Any:
        return self._settings()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._settings())

    def __len__(self) -> int:
        return len(self._settings())


def integration_payload_builder(
    company_id: str, provider: Provider, settings_raw: Any, env: ProviderEnv | None
) -> PayloadBuilder:
    """The document builder of one integration, chosen by its provider from the company's settings and the
    environment. Raises ConfigError (e.g. an unknown Workday protocol, or settings it reads that are broken)."""
    settings = _CompanySettings(settings_raw, company_id, provider.value)
    return payload_builder(provider, settings, env if env is not None else ProviderEnv.from_env())


def _writable(text: str) -> str:
    """SQLite hands back bytes that are not UTF-8 as surrogate escapes (store.engine), which cannot be written again:
    the quarantined row names such an id with its bad bytes shown as \\xNN."""
    if is_utf8_text(text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def outbox_row(raw: Mapping[str, Any], provider: Provider, *, build: PayloadBuilder | None = None) -> NewDelivery:
    """Pure: one raw event -> one outbox row (pending with its payload, or quarantined). `build` is the
    integration's document builder (default: the provider's, for default settings)."""
    company_id = _writable(str(raw.get("company_id")))
    event_id = _writable(str(raw.get("event_id")))
    ident = delivery_id_for(company_id, provider.value, event_id)
    try:
        event = parse_event(raw)
        body = encode_json((build or payload_builder(provider))(event))
    except InvalidEvent as exc:
        return NewDelivery(
            company_id,
            provider.value,
            event_id,
            ident,
            payload=None,
            payload_hash=None,
            status=DeliveryStatus.FAILED,
            error_kind=ErrorKind.INVALID_EVENT,
            last_error=f"invalid event {event_id}: {exc}",
        )
    rank = event.priority.rank
    return NewDelivery(
        company_id, provider.value, event_id, ident, body.decode("utf-8"), payload_hash(body), priority=rank
    )


def extract(
    engine: Engine,
    company_id: str,
    provider: Provider,
    *,
    env: ProviderEnv | None = None,
    batch_size: int = 5000,
    workers: int | None = None,
) -> ExtractReport:
    """Stage the company's events without an outbox row. `workers`: processes that map and write pages when the
    first page is full, on PostgreSQL (default: the machine's cores, at most MAX_WORKERS, for pages of at least
    PARALLEL_MIN_PAGE events; 1 maps in-process)."""
    report = ExtractReport(company_id, provider.value)
    integration = source.integration(engine, company_id, provider.value)
    if integration is None or not integration.enabled:
        report.enabled = False
        return report
    try:
        build = integration_payload_builder(company_id, provider, integration.settings, env)
    except ConfigError as exc:
        report.error = str(exc)  # delivery will mark the rows `config`; extraction cannot choose a format
        return report
    pages = source.undelivered_events(engine, company_id, provider.value, batch_size=batch_size)
    first = next(pages, None)
    if first is None:
        return report
    pages = itertools.chain([first], pages)
    if workers is None:  # processes pay for their start-up only over full pages of thousands
        workers = min(MAX_WORKERS, os.cpu_count() or 1) if batch_size >= PARALLEL_MIN_PAGE else 1
    outbox = Outbox(engine)
    count = _Tally(report, outbox)
    if workers > 1 and len(first) == batch_size and engine.dialect.name == "postgresql" and _picklable(build):
        _stage_in_processes(engine, provider, build, pages, workers, count)
    else:
        _stage_in_thread(outbox, provider, build, pages, count)
    return report


MAX_WORKERS = 4
PARALLEL_MIN_PAGE = 1000  # smaller pages are staged in-process unless workers are asked for


class _Tally:
    """Counts the rows staged into the report and, once the first page has staged STALE_ROWS and then every
    STATISTICS_CHECK_ROWS, has the outbox's statistics refreshed if this extraction has made them stale: the next
    pages and the night's claims are planned from them, and a table that grew from empty (or whose statistics are
    missing) under the planner's feet gets plans that read all of a company's rows for each event."""

    def __init__(self, report: ExtractReport, outbox: Outbox) -> None:
        self.report, self.outbox = report, outbox
        self.checked_at = self.analyzed_at = 0

    def __call__(self, staged: tuple[int, int]) -> None:
        # Counted as inserted: an event whose id is not UTF-8 is read again by every extraction (see _writable).
        new_rows, quarantined = staged
        self.report.new_rows += new_rows
        self.report.invalid += quarantined
        if self.report.new_rows - self.checked_at >= (STATISTICS_CHECK_ROWS if self.checked_at else STALE_ROWS):
            self.checked_at = self.report.new_rows
            if self.outbox.refresh_statistics(changed=self.report.new_rows - self.analyzed_at):
                self.analyzed_at = self.report.new_rows


STATISTICS_CHECK_ROWS = 10_000


def _stage_in_thread(
    outbox: Outbox,
    provider: Provider,
    build: PayloadBuilder,
    pages: Iterator[list[Mapping[str, Any]]],
    count: _Tally,
) -> None:
    """Set-based in batches: the database hands over a page of events still without a row, they are mapped here,
    and the page's rows go back in one statement. Writing a page overlaps with mapping the next (the write waits on
    the database, the mapping on the CPU), and at most two pages are ever held. The first page is staged before
    the next is read, for the statistics (_Tally)."""
    first = next(pages, None)
    if first is None:
        return
    count(_stage(outbox, _mapped(first, provider, build)))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="impactin-stage") as writer:
        writing: Future[tuple[int, int]] | None = None
        for batch in pages:
            rows = _mapped(batch, provider, build)
            if writing is not None:
                count(writing.result())
            writing = writer.submit(_stage, outbox, rows)
        if writing is not None:
            count(writing.result())


def _stage_in_processes(
    engine: Engine,
    provider: Provider,
    build: PayloadBuilder,
    pages: Iterator[list[Mapping[str, Any]]],
    workers: int,
    count: _Tally,
) -> None:
    """Many pages: mapping is pure CPU work in Python, so it runs in worker processes, each writing its own pages
    over its own connection while this process reads the next ones. At most `workers + 1` pages are in flight, so
    memory stays flat however many events there are. Pages are independent (a row exists or it is inserted), so
    their order of arrival does not matter. The first page is staged before the next is read, for the statistics
    (_Tally)."""
    url = engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("spawn")  # never fork a process that may run threads (Dagster's)
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(url, provider.value, build)
    ) as pool:
        first = next(pages, None)
        if first is not None:
            count(pool.submit(_map_and_stage, first).result())
        in_flight: set[Future[tuple[int, int]]] = set()
        for batch in pages:
            if len(in_flight) > workers:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    count(future.result())
            in_flight.add(pool.submit(_map_and_stage, batch))
        for future in in_flight:
            count(future.result())


@dataclass
class _Worker:
    outbox: Outbox
    provider: Provider
    build: PayloadBuilder


_WORKER: _Worker | None = None


def _start_worker(url: str, provider: str, build: PayloadBuilder) -> None:
    global _WORKER
    _WORKER = _Worker(Outbox(make_engine(url, pool_size=1)), Provider(provider), build)


def _map_and_stage(batch: list[Mapping[str, Any]]) -> tuple[int, int]:
    assert _WORKER is not None, "started by _start_worker"
    return _stage(_WORKER.outbox, _mapped(batch, _WORKER.provider, _WORKER.build))


def _picklable(build: PayloadBuilder) -> bool:
    """A builder can go to a worker process when it is a module-level function (every registered provider's is);
    one defined at run time (a provider registered inside a test) is mapped in this process."""
    try:
        pickle.dumps(build)
    except (pickle.PicklingError, AttributeError, TypeError):
        return False
    return True


def _mapped(batch: list[Mapping[str, Any]], provider: Provider, build: PayloadBuilder) -> list[NewDelivery]:
    return [outbox_row(raw, provider, build=build) for raw in batch]


def _stage(outbox: Outbox, rows: list[NewDelivery]) -> tuple[int, int]:
    """Insert one page of rows; return (new rows, new quarantined rows)."""
    quarantined = outbox.add([row for row in rows if row.error_kind is ErrorKind.INVALID_EVENT])
    return outbox.add([row for row in rows if row.error_kind is not ErrorKind.INVALID_EVENT]) + quarantined, quarantined


def unpartitionable_integrations(engine: Engine) -> list[source.Integration]:
    """Enabled integrations of a known provider whose company id cannot be a Dagster partition key."""
    return [i for i in source.integrations(engine) if i.provider in PROVIDERS and not is_valid_company_id(i.company_id)]


def quarantine_unpartitionable(
    engine: Engine, providers: Iterable[Provider] | None = None, *, env: ProviderEnv | None = None
) -> list[ExtractReport]:
    """Extract the events of companies that cannot be partitions (of these providers; default all). Every such event
    fails the gate on its `company_id`, so each becomes `failed/invalid_event` and none is ever sent."""
    wanted = {p.value for p in providers} if providers is not None else set(PROVIDERS)
    reports = []
    for integration in unpartitionable_integrations(engine):
        if integration.provider not in wanted:
            continue
        if not is_utf8_text(integration.company_id):  # SQLite only: such an id cannot be bound to a query
            report = ExtractReport(_writable(integration.company_id), integration.provider)
            report.error = "company_id is not valid UTF-8; its events cannot be read"
            reports.append(report)
            continue
        reports.append(extract(engine, integration.company_id, Provider(integration.provider), env=env))
    return reports

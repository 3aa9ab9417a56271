"""Deliver now: one event handed to us directly (the API's `POST /deliver`) goes through exactly the path a
nightly run takes: it is written to `impact_events`, gets its outbox row from the same pure `outbox_row`, and is
sent by a `DeliveryRun` targeted at that row (claim, retries, attempts, settlement).

Idempotent on the event id: the same event again returns the existing delivery and sends nothing; a different
event under an existing id is a conflict, never an overwrite (the warehouse row is the platform's record).

Event ids are one namespace in `impact_events`, shared by every company. An event submitted for one company by a
caller scoped to it (a company API key) is therefore stored as `api/<company>/<eventId>`: such a caller can neither
take an id another company's platform will write, nor learn from a conflict that another company's id exists; a
conflict can only be with its own earlier event. Unscoped callers (admin keys: the platform, operators) use the
warehouse's ids as they are.
"""

import dataclasses
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.errors import ConfigError, InvalidEvent
from impactin_pipelines.domain.events import MAX_TEXT_CHARS, ImpactEvent, parse_event
from impactin_pipelines.domain.identity import scoped_event_id
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import DeliveryStatus
from impactin_pipelines.providers import PayloadBuilder
from impactin_pipelines.services.deliver import DeliveryRun
from impactin_pipelines.services.extract import integration_payload_builder, outbox_row
from impactin_pipelines.store import source
from impactin_pipelines.store.delivery_log import get_delivery
from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.outbox import Outbox
from impactin_pipelines.store.schema import impact_events as e

LOG = logging.getLogger("impactin.deliver_now")
HOLDER_WAIT_S = 10.0  # how long an answer waits for a run that claimed the row first


class OutOfScope(PermissionError):
    """The caller may not act for this company."""


class EventConflict(ValueError):
    """The event id exists already with different content."""


class DeliverNowRefused(ValueError):
    """The event is valid but cannot be delivered to this provider (no enabled integration, bad settings)."""


@dataclass(frozen=True)
class DeliverNowResult:
    row: dict[str, Any]  # the delivery row as it stands after the attempt
    created: bool  # False: the delivery existed already and nothing was sent


def deliver_now(
    engine: Engine,
    factory: ConnectorFactory,
    raw: Mapping[str, Any],
    provider: Provider,
    *,
    company_ids: Sequence[str] | None = None,
    run_id: str | None = None,
    logger: logging.Logger = LOG,
    wait_s: float = HOLDER_WAIT_S,
) -> DeliverNowResult:
    """`raw` is a snake_case event (as `parse_event` takes it). `company_ids` is the caller's tenant scope
    (None: any company, and event ids are the warehouse's own; otherwise they are stored with `scoped_event_id`).
    When a run under way claims the new row first, the answer waits up to `wait_s` for that run to settle it.
    Raises InvalidEvent, OutOfScope, DeliverNowRefused or EventConflict."""
    event = parse_event(raw)
    if company_ids is not None and event.company_id not in company_ids:
        raise OutOfScope(f"companyId {event.company_id!r} is outside this API key's scope")
    submitted = event.event_id
    if company_ids is not None:
        event = _in_company_namespace(event)
    build = _payload_builder(engine, factory, event.company_id, provider)
    build(event)  # provider-specific rules raise InvalidEvent here
    normalized = _as_row(event)

    _store_event(engine, event, normalized, submitted)
    new = outbox_row(normalized, provider, build=build)
    created = Outbox(engine).add([new]) == 1
    row = get_delivery(engine, new.delivery_id)
    assert row is not None, "the outbox row exists: it was just inserted or found"
    if created:
        report = DeliveryRun(
            engine,
            factory,
            provider=provider,
            company_ids=[event.company_id],
            run_id=run_id or f"deliver-now-{uuid.uuid4().hex[:12]}",
            logger=logger,
            only_ids=[row["id"]],
        ).run()
        if report.totals.rows == 0:  # a run under way claimed it first (urgent rows go in its next batch)
            row = _settled_by_its_holder(engine, new.delivery_id, wait_s)
        row = get_delivery(engine, new.delivery_id) or row
    return DeliverNowResult(row, created)


def _settled_by_its_holder(engine: Engine, delivery_id: str, wait_s: float) -> dict[str, Any]:
    """The row as it stands once the run holding it has settled it, or after `wait_s`: it is sent once, by
    whoever claimed it, and through that run's share of the provider's quota."""
    deadline = time.monotonic() + wait_s
    while True:
        row = get_delivery(engine, delivery_id)
        assert row is not None, "outbox rows are never deleted"
        if row["status"] != DeliveryStatus.PENDING.value or time.monotonic() >= deadline:
            return row
        time.sleep(0.05)


def _payload_builder(engine: Engine, factory: ConnectorFactory, company_id: str, provider: Provider) -> PayloadBuilder:
    """Only companies that enabled the integration get deliveries (as in nightly extraction)."""
    integration = source.integration(engine, company_id, provider.value)
    if integration is None or not integration.enabled:
        raise DeliverNowRefused(f"company {company_id!r} has no enabled {provider.value} integration")
    try:
        return integration_payload_builder(company_id, provider, integration.settings, factory.env)
    except ConfigError as exc:
        raise DeliverNowRefused(str(exc)) from None


def _in_company_namespace(event: ImpactEvent) -> ImpactEvent:
    scoped = scoped_event_id(event.company_id, event.event_id)
    if len(scoped) > MAX_TEXT_CHARS:
        room = MAX_TEXT_CHARS - (len(scoped) - len(event.event_id))
        raise InvalidEvent(
            "event_id",
            event.event_id,
            f"is longer than {room} characters (a company key's eventId is stored as "
            f"'{scoped_event_id(event.company_id, '<eventId>')}', at most {MAX_TEXT_CHARS} characters)",
        )
    return dataclasses.replace(event, event_id=scoped)


def _as_row(event: ImpactEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "company_id": event.company_id,
        "user_id": event.user_id,
        "event_type": event.event_type,
        "occurred_at": event.occurred_at,
        "value": event.value,
        "unit": event.unit,
        "outcome_scores": dict(event.outcome_scores),
        "metadata": dict(event.metadata),
    }


def _store_event(engine: Engine, event: ImpactEvent, row: Mapping[str, Any], submitted: str) -> None:
    """Insert the event unless its id exists; an existing id must hold the same event. The conflict names the id
    as the caller wrote it (`submitted`)."""
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(e).values(**row).on_conflict_do_nothing(index_elements=[e.c.event_id]).returning(e.c.event_id)
    with engine.begin() as conn:
        inserted = conn.execute(stmt).first() is not None
    if inserted:
        return
    with read_connection(engine) as conn:
        stored = conn.execute(sa.select(e).where(e.c.event_id == event.event_id)).first()
    if stored is None or not _same_event(stored._asdict(), event):
        raise EventConflict(f"eventId {submitted!r} already exists with different content")


def _same_event(stored: Mapping[str, Any], event: ImpactEvent) -> bool:
    try:
        return parse_event(stored) == event
    except InvalidEvent:
        return False

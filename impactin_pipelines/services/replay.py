"""Replay: send given deliveries again, now, through the same engine as every delivery.

A replay is a `DeliveryRun` targeted at the rows (`only_ids`): it claims them (so two replays of one row, or a
replay racing the nightly run, send it once), sends with the row's own `delivery_id` as idempotency key, and
records attempts and settles the row like any delivery. A row someone else holds is refused, not waited for.

A quarantined row (failed/invalid_event) has no payload. Replaying it re-reads the event from
`impact_events`: if the platform has corrected it, the payload is built by the same pure `outbox_row` as
extraction and the row is sent; if it is still invalid (or gone) the replay is refused with the reason. So
"replay" after a data fix needs no new row and keeps the row's identity and history.
"""

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.base import OutboundDelivery
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.domain.providers import PROVIDERS, Provider
from impactin_pipelines.domain.statuses import DeliveryStatus, RowOutcome
from impactin_pipelines.observability import log_delivery
from impactin_pipelines.services.deliver import DeliveryRun, RowResult
from impactin_pipelines.services.extract import integration_payload_builder, outbox_row
from impactin_pipelines.store import requeue, source
from impactin_pipelines.store.delivery_log import get_delivery
from impactin_pipelines.store.outbox import NewDelivery

LOG = logging.getLogger("impactin.replay")
MAX_BULK_IDS = 100
BUSY = "Delivery is being delivered right now"


class DeliveryNotFound(LookupError):
    """Unknown id, or a row outside the caller's company scope (indistinguishable on purpose)."""


class SelectionProblem(StrEnum):
    """What can be wrong with a replay selection; each door (CLI, Launchpad) words it in its own terms."""

    IDS_XOR_ALL_FAILED = "ids_xor_all_failed"  # neither, or both
    ALL_FAILED_WITHOUT_COMPANY = "all_failed_without_company"
    FILTER_WITHOUT_ALL_FAILED = "filter_without_all_failed"  # company/provider narrow all_failed only
    UNKNOWN_PROVIDER = "unknown_provider"


def selection_problems(
    ids: Sequence[str], all_failed: bool, company: str | None, provider: str | None
) -> list[SelectionProblem]:
    """The rules of a replay selection, once: ids, or every failed row of a company (optionally one provider)."""
    found = []
    if all_failed == bool(ids):
        found.append(SelectionProblem.IDS_XOR_ALL_FAILED)
    if all_failed and not company:
        found.append(SelectionProblem.ALL_FAILED_WITHOUT_COMPANY)
    if not all_failed and (company or provider):
        found.append(SelectionProblem.FILTER_WITHOUT_ALL_FAILED)
    if provider is not None and provider not in PROVIDERS:
        found.append(SelectionProblem.UNKNOWN_PROVIDER)
    return found


class ReplayRefused(ValueError):
    """The row exists but must not be replayed now; the message says why."""


@dataclass(frozen=True)
class ReplayResult:
    id: str  # the identifier as the caller gave it (row id or delivery id)
    success: bool  # delivered (or, for a dry run, a request could be prepared)
    new_status: str | None
    error: str | None = None
    dry_run: dict[str, Any] | None = None


# -- public API ------------------------------------------------------------------------------------------------
def replay_one(
    engine: Engine,
    factory: ConnectorFactory,
    ident: str,
    *,
    company_ids: Sequence[str] | None = None,
    run_id: str | None = None,
    dry_run: bool = False,
    logger: logging.Logger = LOG,
) -> ReplayResult:
    """Raises DeliveryNotFound / ReplayRefused; anything else that goes wrong is in the result."""
    row = get_delivery(engine, ident, company_ids=company_ids)
    if row is None:
        raise DeliveryNotFound(f"delivery {ident} not found")
    return _replay_rows(engine, factory, [(ident, row)], run_id=run_id, dry_run=dry_run, logger=logger, strict=True)[0]


def replay_many(
    engine: Engine,
    factory: ConnectorFactory,
    idents: Sequence[str],
    *,
    company_ids: Sequence[str] | None = None,
    run_id: str | None = None,
    dry_run: bool = False,
    logger: logging.Logger = LOG,
) -> list[ReplayResult]:
    """One result per given id, in order. Unknown and refused ids become `success=False` results."""
    if len(idents) > MAX_BULK_IDS:
        raise ValueError(f"ids: {len(idents)} given, at most {MAX_BULK_IDS} per request")
    found: list[tuple[str, dict[str, Any]]] = []
    missing: dict[str, ReplayResult] = {}
    for ident in idents:
        row = get_delivery(engine, ident, company_ids=company_ids)
        if row is None:
            missing[ident] = ReplayResult(ident, False, None, f"delivery {ident} not found")
        else:
            found.append((ident, row))
    done = _replay_rows(engine, factory, found, run_id=run_id, dry_run=dry_run, logger=logger)
    by_ident = {r.id: r for r in done}
    return [missing.get(ident) or by_ident[ident] for ident in idents]


def replay_all_failed(
    engine: Engine,
    factory: ConnectorFactory,
    *,
    company_id: str,
    provider: str | None = None,
    run_id: str | None = None,
    dry_run: bool = False,
    page_size: int = 100,
    logger: logging.Logger = LOG,
    on_page: Callable[[list[ReplayResult]], None] | None = None,
) -> list[ReplayResult]:
    """Every `failed` row of the company (optionally one provider), oldest first, a page at a time until none
    is left. Rows that fail again stay behind the keyset cursor, so this ends. `on_page` sees each page's results
    as it settles (progress of an API job)."""
    if provider is not None:
        provider = Provider.parse(provider).value
    if page_size < 1:
        raise ValueError(f"page_size={page_size!r} must be at least 1")
    results: list[ReplayResult] = []
    after: tuple[datetime, str] | None = None
    while page := requeue.failed_page(engine, company_id, provider, after=after, limit=page_size):
        settled = _replay_rows(
            engine, factory, [(r["id"], r) for r in page], run_id=run_id, dry_run=dry_run, logger=logger
        )
        results.extend(settled)
        if on_page is not None:
            on_page(settled)
        after = (page[-1]["created_at"], page[-1]["id"])
    return results


# -- the work --------------------------------------------------------------------------------------------------
def _replay_rows(
    engine: Engine,
    factory: ConnectorFactory,
    found: Sequence[tuple[str, dict[str, Any]]],
    *,
    run_id: str | None,
    dry_run: bool,
    logger: logging.Logger,
    strict: bool = False,
) -> list[ReplayResult]:
    """Refuse what cannot go, then one targeted DeliveryRun per provider for the rest. A row named twice (by
    its id and its delivery id) is sent once. With `strict`, a refusal raises instead of becoming a result."""
    by_row: dict[str, ReplayResult] = {}  # row id -> result
    sendable: dict[str, dict[str, Any]] = {}  # row id -> row
    enabled: dict[tuple[str, str], bool] = {}  # (company, provider) -> integration enabled
    for ident, row in found:
        if row["id"] in by_row or row["id"] in sendable:
            continue
        try:
            if row["status"] == DeliveryStatus.SUCCESS.value:
                raise ReplayRefused(f"Cannot replay delivery with status: {row['status']}")
            _refuse_if_disabled(engine, row, enabled)
            rebuilt = _rebuilt_if_quarantined(engine, factory, row)
        except ReplayRefused as exc:
            _log(logger, logging.WARNING, f"replay refused: {exc}", row)
            if strict:
                raise
            by_row[row["id"]] = ReplayResult(ident, False, row["status"], str(exc))
            continue
        _log(logger, logging.INFO, "replay dry run" if dry_run else "replay requested", row)
        if dry_run:
            payload = rebuilt.payload if rebuilt is not None else row["payload"]
            by_row[row["id"]] = _preview(factory, ident, row, str(payload))
            continue
        if rebuilt is not None and not requeue.requeue_with_payload(
            engine, row["id"], str(rebuilt.payload), rebuilt.payload_hash
        ):
            by_row[row["id"]] = _refused_now(engine, row, logger, strict, ident=ident)
            continue
        sendable[row["id"]] = row

    outcomes = _send(engine, factory, list(sendable.values()), run_id=run_id, logger=logger)
    settled = requeue.rows_by_id(engine, list(outcomes))
    for ident, row in found:
        if row["id"] in by_row:
            continue
        outcome = outcomes.get(row["id"])
        # not ours: delivered meanwhile, or someone else's
        if outcome is None or outcome.status is RowOutcome.CLAIM_LOST:
            by_row[row["id"]] = _refused_now(engine, row, logger, strict, ident=ident)
            continue
        ok = outcome.status is RowOutcome.SUCCESS
        stored = settled.get(row["id"], row)
        new_status = outcome.status.delivery_status or DeliveryStatus(stored["status"])
        error = None if ok else (outcome.error or stored.get("last_error") or f"delivery is {new_status}")
        by_row[row["id"]] = ReplayResult(ident, ok, new_status.value, error)
    return [replace(by_row[row["id"]], id=ident) for ident, row in found]


def _send(
    engine: Engine,
    factory: ConnectorFactory,
    rows: Sequence[dict[str, Any]],
    *,
    run_id: str | None,
    logger: logging.Logger,
) -> dict[str, RowResult]:
    by_provider: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_provider[row["provider"]].append(row)
    outcomes: dict[str, RowResult] = {}
    for provider, group in sorted(by_provider.items()):
        report = DeliveryRun(
            engine,
            factory,
            provider=Provider(provider),
            company_ids=sorted({r["company_id"] for r in group}),
            run_id=run_id,
            logger=logger,
            only_ids=[r["id"] for r in group],
        ).run()
        outcomes.update(report.rows)
    return outcomes


def _refused_now(
    engine: Engine, row: dict[str, Any], logger: logging.Logger, strict: bool, *, ident: str | None = None
) -> ReplayResult:
    """The row was not ours to send: it is delivered by now, or someone else holds it."""
    current = get_delivery(engine, row["id"]) or row
    if current["status"] == DeliveryStatus.SUCCESS.value:
        reason = f"Cannot replay delivery with status: {current['status']}"
    else:
        reason = BUSY
    _log(logger, logging.WARNING, f"replay refused: {reason}", current)
    if strict:
        raise ReplayRefused(reason)
    return ReplayResult(ident or row["id"], False, current["status"], reason)


def outbox_row_for(engine: Engine, factory: ConnectorFactory, row: dict[str, Any]) -> NewDelivery:
    """The row as extraction would build it today from its source event. Raises ReplayRefused."""
    provider = Provider(row["provider"])
    raw = requeue.source_event(engine, row["company_id"], row["event_id"])
    if raw is None:
        raise ReplayRefused(f"Cannot replay: event {row['event_id']} no longer exists in impact_events")
    integration = source.integration(engine, row["company_id"], provider.value)
    try:
        build = integration_payload_builder(
            row["company_id"], provider, integration.settings if integration else None, factory.env
        )
        return outbox_row(raw, provider, build=build)
    except ConfigError as exc:
        raise ReplayRefused(f"Cannot replay: {exc}") from None


def _refuse_if_disabled(engine: Engine, row: dict[str, Any], cache: dict[tuple[str, str], bool]) -> None:
    """A company that switched an integration off does not want its data sent there, even by hand."""
    key = (row["company_id"], row["provider"])
    if key not in cache:
        integration = source.integration(engine, *key)
        cache[key] = bool(integration and integration.enabled)
    if not cache[key]:
        raise ReplayRefused(f"Cannot replay: the {row['provider']} integration of {row['company_id']} is not enabled")


def _rebuilt_if_quarantined(engine: Engine, factory: ConnectorFactory, row: dict[str, Any]) -> NewDelivery | None:
    """None: send the stored payload (the exact bytes of every earlier attempt). A quarantined row gets its
    payload rebuilt from the corrected event, or the replay is refused with the reason it is still invalid."""
    if row["payload"] is not None:
        return None
    rebuilt = outbox_row_for(engine, factory, row)
    if rebuilt.payload is None:
        raise ReplayRefused(f"Cannot replay: {rebuilt.last_error or 'the event is still invalid'}")
    return rebuilt


def _preview(factory: ConnectorFactory, ident: str, row: dict[str, Any], payload: str) -> ReplayResult:
    """What a replay would send, secrets masked; nothing is claimed, written or sent."""
    outbound = OutboundDelivery(row["delivery_id"], row["company_id"], row["provider"], row["event_id"], payload)
    plan: dict[str, Any] = {
        "id": row["id"],
        "deliveryId": row["delivery_id"],
        "companyId": row["company_id"],
        "provider": row["provider"],
        "eventId": row["event_id"],
        "status": row["status"],
        "idempotencyKey": row["delivery_id"],
        "payload": _json_or_text(payload),
        "payloadRebuilt": row["payload"] is None,
    }
    try:
        connector = factory.connector(row["company_id"], Provider(row["provider"]))
        request = connector.prepare(outbound).masked()
    except ConfigError as exc:
        plan.update(endpoint=None, request=None)
        return ReplayResult(ident, False, row["status"], f"not configured: {exc}", dry_run=plan)
    redactor = getattr(connector, "redactor", None)  # belt and braces: a SOAP body may carry a UsernameToken
    if redactor is not None:
        request["body"] = redactor.scrub(request["body"])
    plan.update(endpoint=f"{request['method']} {request['url']}", request=request)
    return ReplayResult(ident, True, row["status"], dry_run=plan)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _log(logger: logging.Logger, level: int, message: str, row: dict[str, Any]) -> None:
    log_delivery(
        logger,
        level,
        message,
        delivery_id=row["delivery_id"],
        provider=row["provider"],
        event_id=row["event_id"],
        status=row["status"],
        attempt_count=row["attempt_count"],
        companyId=row["company_id"],
    )

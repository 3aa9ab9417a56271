"""The delivery pipeline as assets: the outbox (extract) and the deliveries (send), partitioned by company x
provider. Both run as range runs (one run covers many partitions) so a night with thousands of partitions
costs a handful of process starts, not thousands."""

import logging
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import dagster as dg

from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.defs.orchestration.partitions import delivery_partitions, partition_key, split_key
from impactin_pipelines.defs.resources import DeliveryResource, ProvidersResource, WarehouseResource
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import ErrorKind, RowOutcome
from impactin_pipelines.observability import run_delivery_logger
from impactin_pipelines.services.deliver import DeliveryCounts, DeliveryReport, DeliveryRun
from impactin_pipelines.services.extract import ExtractReport, extract, quarantine_unpartitionable
from impactin_pipelines.store.outbox import Outbox
from impactin_pipelines.store.source import companies_with_new_events

GROUP = "impact_in"
# Partitions given metadata of their own in one run: only those that need attention (failed or retrying rows,
# extraction errors), at most this many. Dagster checks each partition key against the run's whole range on every
# `add_asset_metadata(partition_key=...)` (a storage read each), so metadata for every partition of a range would
# cost O(partitions²); the counts of every partition stay in the warehouse.
ATTENTION_PARTITIONS_MAX = 100
ATTENTION_LISTED = 20  # partitions named in the run-level summary every materialization of the run carries


def _companies_by_provider(context: dg.AssetExecutionContext) -> dict[Provider, list[str]]:
    grouped: dict[Provider, list[str]] = defaultdict(list)
    for key in context.partition_keys:
        company, provider = split_key(key)
        grouped[Provider(provider)].append(company)
    return grouped


@dg.asset(
    partitions_def=delivery_partitions,
    group_name=GROUP,
    kinds={"sql"},
    description="Outbox rows: one per (event, enabled provider), with the exact payload to send. "
    "Events that cannot be mapped, and the events of companies whose id cannot be a partition key, are "
    "quarantined as failed/invalid_event.",
)
def impact_outbox(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, providers: ProvidersResource
) -> dg.MaterializeResult:
    env = providers.provider_env()
    totals = {"new_rows": 0, "invalid_events": 0}
    attention: dict[str, dict[str, object]] = {}
    for provider, companies in _companies_by_provider(context).items():
        with_new_events = companies_with_new_events(warehouse.engine, provider.value, companies)
        for company in companies:
            if company not in with_new_events:
                continue  # nothing to stage: a night's range is mostly such companies
            report = extract(warehouse.engine, company, provider, env=env)
            totals["new_rows"] += report.new_rows
            totals["invalid_events"] += report.invalid
            if report.error:
                context.log.error(f"{company}/{provider.value}: {report.error}")
            if report.error or report.invalid:
                metadata: dict[str, object] = {
                    "new_rows": report.new_rows,
                    "invalid_events": report.invalid,
                    "integration_enabled": report.enabled,
                }
                if report.error:
                    metadata["error"] = report.error
                attention[partition_key(company, provider.value)] = metadata
    _add_attention_metadata(context, attention)
    # The night's claims are planned from the outbox's statistics, which a first night finds empty.
    Outbox(warehouse.engine).refresh_statistics(changed=totals["new_rows"])
    # Companies that cannot be partitions are in no run's range: every run quarantines them for its providers.
    for report in quarantine_unpartitionable(warehouse.engine, _companies_by_provider(context), env=env):
        totals["new_rows"] += report.new_rows
        totals["invalid_events"] += report.invalid
        _log_unpartitionable(context, report)
    context.log.info(f"outbox: {totals['new_rows']} new rows, {totals['invalid_events']} quarantined")
    return dg.MaterializeResult(
        metadata={
            "run_new_rows": totals["new_rows"],
            "run_invalid_events": totals["invalid_events"],
            "partitions_needing_attention": len(attention),
        }
    )


def _add_attention_metadata(context: dg.AssetExecutionContext, attention: Mapping[str, Mapping[str, object]]) -> None:
    """Metadata of their own for the partitions that need attention (the first ATTENTION_PARTITIONS_MAX)."""
    for key, metadata in list(attention.items())[:ATTENTION_PARTITIONS_MAX]:
        context.add_asset_metadata(metadata, partition_key=key)


def _log_unpartitionable(context: dg.AssetExecutionContext, report: ExtractReport) -> None:
    where = f"company_id {report.company_id!r} ({report.provider}) cannot be a Dagster partition key"
    if report.error:
        context.log.error(f"{where}: {report.error}")
    elif report.invalid:
        context.log.warning(f"{where}: {report.invalid} event(s) quarantined as failed/invalid_event")


def _partition_metadata(counts: DeliveryCounts) -> dict[str, int]:
    """One partition's materialization metadata; `internal_errors` are rows the warehouse kept us from recording."""
    return {
        "delivered": counts.outcomes[RowOutcome.SUCCESS],
        "retrying": counts.outcomes[RowOutcome.RETRYING],
        "failed": counts.outcomes[RowOutcome.FAILED],
        "rejected": counts.error_kinds[ErrorKind.REJECTED],
        "config_errors": counts.error_kinds[ErrorKind.CONFIG],
        "exhausted": counts.error_kinds[ErrorKind.EXHAUSTED],
        "held": counts.outcomes[RowOutcome.HELD],  # not sent: the provider's circuit was open or paused
        "attempts": counts.attempts,
        "internal_errors": counts.outcomes[RowOutcome.NOT_SENT] + counts.outcomes[RowOutcome.UNRECORDED],
    }


def _delivery_logger(context: dg.AssetExecutionContext, run_log_level: str) -> logging.Logger:
    """Delivery lines go to stderr (the compute log); those at or above `run_log_level` also to the run log,
    through the `impactin` logger the instance manages (`python_logs` in dagster.yaml)."""
    if "impactin" in context.instance.managed_python_loggers:
        run_log = logging.getLogger("impactin")
    else:
        context.log.warning(
            "this Dagster instance does not manage the `impactin` loggers; add `python_logs: "
            "{managed_python_loggers: [impactin]}` to its dagster.yaml so their warnings reach the run log"
        )
        run_log = dg.get_dagster_logger("impactin")
    # An asset outside any graph runs as the step named after its op.
    return run_delivery_logger(
        run_log, run_log_level, tags={"runId": context.run.run_id, "stepKey": context.op_def.name}
    )


@dg.asset(
    partitions_def=delivery_partitions,
    deps=[impact_outbox],
    group_name=GROUP,
    kinds={"python", "sql"},
    description="Deliveries: due outbox rows sent to the provider with retries, every attempt recorded.",
)
def impact_deliveries(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    providers: ProvidersResource,
    delivery: DeliveryResource,
) -> dg.MaterializeResult:
    settings = delivery.settings()
    factory = ConnectorFactory(warehouse.engine, settings=settings, env=providers.provider_env())
    logger = _delivery_logger(context, delivery.run_log_level)
    grouped = _companies_by_provider(context)
    try:
        with ThreadPoolExecutor(max(1, len(grouped)), thread_name_prefix="impactin-provider") as pool:
            futures = {
                provider: pool.submit(
                    DeliveryRun(
                        warehouse.engine,
                        factory,
                        provider=provider,
                        company_ids=companies,
                        settings=settings,
                        run_id=context.run.run_id,
                        logger=logger,
                    ).run
                )
                for provider, companies in grouped.items()
            }
            reports: dict[Provider, DeliveryReport] = {p: f.result() for p, f in futures.items()}
    finally:
        factory.close()

    internal_errors: list[str] = []
    run_totals = DeliveryCounts()
    attention: dict[str, DeliveryCounts] = {}
    for provider in grouped:
        report = reports[provider]
        internal_errors.extend(report.errors)
        for company, counts in report.by_company.items():
            if needs_attention(counts):
                attention[partition_key(company, provider.value)] = counts
        totals = report.totals
        run_totals.update(totals)
        context.log.info(
            f"{provider.value}: {totals.outcomes[RowOutcome.SUCCESS]} delivered, "
            f"{totals.outcomes[RowOutcome.RETRYING]} retrying, {totals.outcomes[RowOutcome.FAILED]} failed, "
            f"{totals.attempts} attempts in {report.seconds:.1f}s"
        )
    if internal_errors:
        raise dg.Failure(
            description=(
                f"the warehouse could not record deliveries, so the run stopped sending: {len(internal_errors)} "
                "rows were left unrecorded or unsent; their leases bring them back to the next run"
            ),
            metadata={"examples": dg.MetadataValue.md("\n".join(f"- {e}" for e in internal_errors[:20]))},
        )
    worst = sorted(attention.items(), key=lambda kv: (-_unsettled(kv[1]), kv[0]))
    _add_attention_metadata(context, {key: _partition_metadata(counts) for key, counts in worst})
    return dg.MaterializeResult(metadata=_run_metadata(run_totals, worst, sum(len(c) for c in grouped.values())))


def needs_attention(counts: DeliveryCounts) -> bool:
    """A partition an operator should look at: rows failed, retrying, held by an open circuit or a pause, or left
    unrecorded in this run."""
    return _unsettled(counts) > 0


def _unsettled(counts: DeliveryCounts) -> int:
    o = counts.outcomes
    return (
        o[RowOutcome.FAILED]
        + o[RowOutcome.RETRYING]
        + o[RowOutcome.HELD]
        + o[RowOutcome.NOT_SENT]
        + o[RowOutcome.UNRECORDED]
    )


def _run_metadata(
    totals: DeliveryCounts, attention: list[tuple[str, DeliveryCounts]], partitions: int
) -> dict[str, int | dg.MetadataValue[str]]:
    """The run's summary. Dagster puts it on every partition the run materialises (so it says `run_`), and the
    partitions that need attention are named, worst first, with counts of their own in their own metadata."""
    listed = "\n".join(
        f"- `{key}`: {c.outcomes[RowOutcome.FAILED]} failed, {c.outcomes[RowOutcome.RETRYING]} retrying"
        for key, c in attention[:ATTENTION_LISTED]
    )
    if len(attention) > ATTENTION_LISTED:
        listed += f"\n- … and {len(attention) - ATTENTION_LISTED} more (`impactin deliveries list --status failed`)"
    return {
        **{f"run_{name}": value for name, value in _partition_metadata(totals).items()},
        "run_partitions": partitions,
        "partitions_needing_attention": len(attention),
        "needing_attention": dg.MetadataValue.md(listed or "none"),
    }

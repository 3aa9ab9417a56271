"""The replay job: the CLI's choices as run config, so operators can replay from the Launchpad.

    ops: {replay_deliveries: {config: {ids: [...]}}}                                  # these deliveries
    ops: {replay_deliveries: {config: {all_failed: true, company: acme, provider: benevity}}}
    add `dry_run: true` to see what would be sent (secrets masked) without sending.

The run fails (red in the UI) when a replay did not end in `success`; its metadata lists every row.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg
from pydantic import Field

from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.defs.resources import DeliveryResource, ProvidersResource, WarehouseResource
from impactin_pipelines.domain.providers import PROVIDERS
from impactin_pipelines.services.replay import (
    MAX_BULK_IDS,
    ReplayResult,
    SelectionProblem,
    replay_all_failed,
    replay_many,
    selection_problems,
)

SHOWN_ROWS = 200  # rows in the markdown table; the counts always cover all of them


class ReplayConfig(dg.Config):
    ids: list[str] = Field(default_factory=list, description=f"Row ids or delivery ids (at most {MAX_BULK_IDS}).")
    all_failed: bool = Field(False, description="Replay every failed delivery of `company`, oldest first.")
    company: str | None = Field(None, description="With all_failed: the company.")
    provider: str | None = Field(None, description=f"With all_failed: only this provider ({', '.join(PROVIDERS)}).")
    dry_run: bool = Field(False, description="Show what would be sent, secrets masked; send nothing.")

    def problems(self) -> list[str]:
        words = {
            SelectionProblem.IDS_XOR_ALL_FAILED: "give ids, or all_failed with company (not both)",
            SelectionProblem.ALL_FAILED_WITHOUT_COMPANY: "all_failed needs company",
            SelectionProblem.FILTER_WITHOUT_ALL_FAILED: "company and provider go with all_failed",
            SelectionProblem.UNKNOWN_PROVIDER: f"provider={self.provider!r} is not one of {', '.join(PROVIDERS)}",
        }
        found = [words[p] for p in selection_problems(self.ids, self.all_failed, self.company, self.provider)]
        if len(self.ids) > MAX_BULK_IDS:  # the command line pages ids; one Launchpad run takes one page
            found.append(f"ids: {len(self.ids)} given, at most {MAX_BULK_IDS}")
        return found


def _markdown(results: list[ReplayResult]) -> str:
    lines = ["| id | result | new status | error |", "|---|---|---|---|"]
    for r in results[:SHOWN_ROWS]:
        error = (r.error or "").replace("|", "\\|").replace("\n", " ")[:200]
        lines.append(f"| {r.id} | {'ok' if r.success else 'not delivered'} | {r.new_status or '-'} | {error} |")
    if len(results) > SHOWN_ROWS:
        lines.append(f"| ... {len(results) - SHOWN_ROWS} more | | | |")
    return "\n".join(lines)


@dg.op(out=dg.Out(dg.Nothing), tags={"impactin/operation": "replay"})
def replay_deliveries(
    context: dg.OpExecutionContext,
    config: ReplayConfig,
    warehouse: WarehouseResource,
    providers: ProvidersResource,
    delivery: DeliveryResource,
) -> Iterator[dg.Output[None]]:
    """Replays through the same service as the CLI and the API (claimed, so never sent twice)."""
    problems = config.problems()
    if problems:
        raise dg.Failure(description="invalid replay config: " + "; ".join(problems), allow_retries=False)
    factory = ConnectorFactory(warehouse.engine, settings=delivery.settings(), env=providers.provider_env())
    logger = dg.get_dagster_logger("impactin.replay")
    try:
        if config.all_failed:
            assert config.company is not None
            results = replay_all_failed(
                warehouse.engine,
                factory,
                company_id=config.company,
                provider=config.provider,
                run_id=context.run_id,
                dry_run=config.dry_run,
                logger=logger,
            )
        else:
            results = replay_many(
                warehouse.engine, factory, config.ids, run_id=context.run_id, dry_run=config.dry_run, logger=logger
            )
    finally:
        factory.close()
    ok = sum(r.success for r in results)
    metadata: dict[str, Any] = {
        "total": len(results),
        "successful": ok,
        "failed": len(results) - ok,
        "dry_run": config.dry_run,
        "results": dg.MetadataValue.md(_markdown(results)),
    }
    if config.dry_run:
        metadata["would_send"] = dg.MetadataValue.json([r.dry_run for r in results[:SHOWN_ROWS] if r.dry_run])
    if ok < len(results):
        raise dg.Failure(
            description=f"{len(results) - ok} of {len(results)} replays did not end in success",
            metadata=metadata,
            allow_retries=False,
        )
    context.log.info(f"replayed {len(results)}: all {'ready to send' if config.dry_run else 'delivered'}")
    yield dg.Output(None, metadata=metadata)


@dg.job(description="Replay deliveries: given ids, or every failed one of a company (optionally one provider).")
def impact_replay_job() -> None:
    replay_deliveries()

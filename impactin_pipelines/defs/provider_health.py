"""Provider connectivity in Dagster: an asset check on the integrations (the company_integrations rows and the
provider configuration they resolve to) that reports which can authenticate, without sending impact data.

It runs on its own job, not inside deliveries (each check fetches a token per company); the hourly schedule that
launches it is off by default: turn it on in the UI, or execute the check from the asset's page.
"""

from collections.abc import Sequence

import dagster as dg

from impactin_pipelines.connectors.base import ConnectivityResult
from impactin_pipelines.defs.resources import DeliveryResource, ProvidersResource, WarehouseResource
from impactin_pipelines.services.provider_checks import check_providers

GROUP = "impact_in"

provider_integrations = dg.AssetSpec(
    "provider_integrations",
    group_name=GROUP,
    kinds={"sql"},
    description="Enabled company_integrations rows (written by the TEEI platform) with the provider configuration "
    "each resolves to: per-company settings over the providers' environment variables.",
)


def _markdown(results: Sequence[ConnectivityResult]) -> str:
    lines = ["| company | provider | auth | detail |", "|---|---|---|---|"]
    for r in results:
        detail = r.detail.replace("|", "\\|").replace("\n", " ")[:300]
        lines.append(f"| {r.company_id} | {r.provider} | {r.verdict if r.ok else r.verdict.upper()} | {detail} |")
    return "\n".join(lines)


@dg.asset_check(
    asset=provider_integrations.key,
    name="providers_can_authenticate",
    blocking=False,
    description="Each enabled integration authenticates with its provider (OAuth: a token is issued; Benevity: a "
    "signed empty request is refused for its content, not its credentials; Workday SOAP: an empty report is refused "
    "for its content, and differently from an unknown user's). No impact data is sent.",
)
def providers_can_authenticate(
    warehouse: WarehouseResource, providers: ProvidersResource, delivery: DeliveryResource
) -> dg.AssetCheckResult:
    results = check_providers(warehouse.engine, env=providers.provider_env(), settings=delivery.settings())
    failing = [r for r in results if not r.ok]
    failed = [r for r in failing if not r.inconclusive]
    unproven = [r for r in failing if r.inconclusive]
    problems = [f"{len(failed)} of {len(results)} integration(s) cannot authenticate"] if failed else []
    problems += [f"{len(unproven)} reachable with credentials not proven"] if unproven else []
    return dg.AssetCheckResult(
        passed=not failing,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(problems) or None,
        metadata={
            "checked": len(results),
            "failed": len(failed),
            "not_proven": len(unproven),
            "failing": ", ".join(f"{r.company_id}/{r.provider}" for r in failing) or "none",
            "results": dg.MetadataValue.md(_markdown(results)),
        },
    )


provider_health_job = dg.define_asset_job(
    "provider_health_job",
    selection=dg.AssetSelection.checks(providers_can_authenticate),
    description="Check that every enabled integration can authenticate with its provider (no impact data sent).",
)

provider_health_schedule = dg.ScheduleDefinition(
    name="provider_health_schedule",
    job=provider_health_job,
    cron_schedule="17 * * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Hourly provider connectivity check; off by default.",
)

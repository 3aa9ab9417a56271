"""`impactin replay ID...` and `impactin replay --all-failed --company C [--provider P]`, with `--dry-run`."""

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import click

from impactin_pipelines.cli.common import ProviderChoice, engine
from impactin_pipelines.cli.output import echo_json, table
from impactin_pipelines.cli.progress import Progress
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.services.replay import (
    MAX_BULK_IDS,
    ReplayResult,
    SelectionProblem,
    replay_all_failed,
    replay_many,
    selection_problems,
)
from impactin_pipelines.store.progress import ProviderProgress, failed_counts, replay_progress

USAGE = {
    SelectionProblem.IDS_XOR_ALL_FAILED: "give delivery IDs, or --all-failed --company C (not both)",
    SelectionProblem.ALL_FAILED_WITHOUT_COMPANY: "--all-failed needs --company",
    SelectionProblem.FILTER_WITHOUT_ALL_FAILED: "--company and --provider go with --all-failed",
    SelectionProblem.UNKNOWN_PROVIDER: "--provider is not a registered provider",
}


@click.command()
@click.argument("ids", nargs=-1)
@click.option("--all-failed", is_flag=True, help="Replay every failed delivery of --company, oldest first.")
@click.option("--company", help="With --all-failed: the company whose failed deliveries to replay.")
@click.option("--provider", type=ProviderChoice(), help="With --all-failed: only this provider.")
@click.option("--dry-run", is_flag=True, help="Show exactly what would be sent (secrets masked); send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the API's bulk-replay shape).")
def replay(
    ids: tuple[str, ...], all_failed: bool, company: str | None, provider: str | None, dry_run: bool, as_json: bool
) -> None:
    """Send deliveries again now, with their original idempotency key (row id or delivery id accepted). With
    --all-failed, progress per provider goes to stderr (redrawn on a terminal, plain lines every 10 s otherwise).

    A delivered row is refused; a row being delivered right now is refused, not sent twice. Exits 1 when any
    replay did not end in `success` (or, with --dry-run, could not be prepared).
    """
    problems = selection_problems(ids, all_failed, company, provider)
    if problems:  # --provider is a choice of registered providers already
        raise click.UsageError(USAGE[problems[0]])
    eng = engine()
    factory = ConnectorFactory(eng)
    try:
        if all_failed:
            assert company is not None
            started = datetime.now(UTC)
            failed = {} if dry_run else failed_counts(eng, company_id=company, provider=provider)

            def sample() -> dict[str, ProviderProgress]:
                return replay_progress(eng, started, failed, company_id=company, provider=provider)

            with Progress(sample):
                results = replay_all_failed(eng, factory, company_id=company, provider=provider, dry_run=dry_run)
        else:
            results = []
            for start in range(0, len(ids), MAX_BULK_IDS):
                results += replay_many(eng, factory, ids[start : start + MAX_BULK_IDS], dry_run=dry_run)
    finally:
        factory.close()
    if as_json:
        echo_json(as_document(results))
    else:
        print_results(results, dry_run=dry_run)
    if not all(r.success for r in results):
        raise SystemExit(1)


def as_document(results: Sequence[ReplayResult]) -> dict[str, object]:
    ok = sum(r.success for r in results)
    return {
        "summary": {"total": len(results), "successful": ok, "failed": len(results) - ok},
        "results": [
            {
                "id": r.id,
                "success": r.success,
                "newStatus": r.new_status,
                **({"error": r.error} if r.error else {}),
                **({"dryRun": r.dry_run} if r.dry_run is not None else {}),
            }
            for r in results
        ],
    }


def print_results(results: Sequence[ReplayResult], *, dry_run: bool) -> None:
    if not results:
        click.echo("nothing to replay")
        return
    if dry_run:
        for r in results:
            click.echo(f"== {r.id}: " + ("would send" if r.success else f"would NOT send: {r.error}"))
            if r.dry_run and r.dry_run.get("request"):
                request = r.dry_run["request"]
                click.echo(f"{request['method']} {request['url']}")
                for name, value in request["headers"].items():
                    click.echo(f"{name}: {value}")
                click.echo()
                click.echo(json.dumps(r.dry_run["payload"], indent=2, ensure_ascii=False))
            click.echo()
    else:
        click.echo(table(["id", "result", "new status", "error"], [_row(r) for r in results], max_width=100))
    ok = sum(r.success for r in results)
    verb = "ready to send" if dry_run else "delivered"
    click.echo(f"{len(results)} replay(s): {ok} {verb}, {len(results) - ok} not")


def _row(r: ReplayResult) -> list[object]:
    return [r.id, "ok" if r.success else "not delivered", r.new_status, r.error]

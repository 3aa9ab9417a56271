"""`impactin run`: the delivery job, now, in-process, through Dagster."""

import logging
from datetime import UTC, datetime

import click
from sqlalchemy.engine import Engine

from impactin_pipelines.cli.common import ProviderChoice, engine, require_encryption_key
from impactin_pipelines.cli.output import echo_json, table
from impactin_pipelines.cli.progress import Progress
from impactin_pipelines.store.delivery_log import attempts_in_runs, config_failures_since, status_counts
from impactin_pipelines.store.progress import ProviderProgress, delivery_progress

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


@click.command()
@click.option("--company", "companies", multiple=True, help="Only this company (repeatable). Default: all.")
@click.option("--provider", "providers", multiple=True, type=ProviderChoice(), help="Only this provider.")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS),
    default="ERROR",
    show_default=True,
    help="Dagster run log level shown on the console.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def run(companies: tuple[str, ...], providers: tuple[str, ...], log_level: str, as_json: bool) -> None:
    """Extract and deliver pending events now (the job the nightly schedule runs), then summarise. Progress per
    provider (done / total, rate, ETA) goes to stderr: redrawn on a terminal, plain lines every 10 s otherwise.

    Exits 1 when a run crashed or rows failed for configuration (credentials or settings missing: nothing could
    be sent); other row-level failures are data, shown in the summary.
    """
    from impactin_pipelines.cli import configure_logging

    configure_logging(getattr(logging, log_level))
    require_encryption_key()
    eng = engine()
    summary = execute(eng, companies=list(companies), providers=list(providers), trigger="cli", log_level=log_level)
    if as_json:
        echo_json(summary)
    else:
        print_summary(summary)
    if not summary["ok"]:
        raise SystemExit(1)


def execute(
    eng: Engine, *, companies: list[str], providers: list[str], trigger: str, log_level: str
) -> dict[str, object]:
    from impactin_pipelines.defs.orchestration.runner import run_delivery_job, selected_partitions

    chosen, wanted, problems = selected_partitions(eng, companies or None, providers or None)
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)
    started = datetime.now(UTC)

    def sample() -> dict[str, ProviderProgress]:
        return delivery_progress(eng, started, datetime.now(UTC), company_ids=chosen, providers=wanted)

    with Progress(sample):
        outcomes = run_delivery_job(eng, companies=chosen, providers=wanted, trigger=trigger, log_level=log_level)
    config_failed = config_failures_since(eng, started, company_ids=chosen, providers=wanted)
    run_ids = [o.run_id for o in outcomes]
    made = attempts_in_runs(eng, run_ids)
    state = status_counts(eng, company_ids=chosen, providers=wanted)
    rows = []
    for company, provider in sorted(set(state) | set(made)):
        attempts = made.get((company, provider), {})
        counts = state.get((company, provider), {})
        rows.append(
            {
                "company": company,
                "provider": provider,
                "attemptsThisRun": sum(attempts.values()),
                "deliveredThisRun": attempts.get("success", 0),
                "success": counts.get("success", 0),
                "retrying": counts.get("retrying", 0),
                "failed": counts.get("failed", 0),
                "pending": counts.get("pending", 0),
            }
        )
    return {
        "ok": all(o.success for o in outcomes) and not config_failed,
        "configFailures": [
            {"company": company, "provider": provider, "rows": n}
            for (company, provider), n in sorted(config_failed.items())
        ],
        "runs": [
            {
                "runId": o.run_id,
                "success": o.success,
                "from": o.partitions.start,
                "to": o.partitions.end,
                "error": o.error,
            }
            for o in outcomes
        ],
        "partitions": rows,
    }


def print_summary(summary: dict) -> None:
    for r in summary["runs"]:
        state = "ok" if r["success"] else f"FAILED: {r['error']}"
        click.echo(f"run {r['runId']} [{r['from']} .. {r['to']}]: {state}")
    if not summary["runs"]:
        click.echo("nothing to run: no enabled integration matches the selection")
        return
    rows = summary["partitions"]
    headers = ["company", "provider", "sent now", "delivered now", "success", "retrying", "failed", "pending"]
    keys = ["company", "provider", "attemptsThisRun", "deliveredThisRun", "success", "retrying", "failed", "pending"]
    totals = ["total", "", *(sum(r[k] for r in rows) for k in keys[2:])]
    click.echo()
    click.echo(table(headers, [[r[k] for k in keys] for r in rows] + [totals]))
    failures = summary["configFailures"]
    if failures:
        click.echo()
        click.echo(
            f"{sum(f['rows'] for f in failures)} row(s) failed for configuration (nothing was sent): "
            + ", ".join(f"{f['company']}/{f['provider']} {f['rows']}" for f in failures)
        )
        click.echo(
            "set the providers' variables or the companies' settings (`impactin providers check` tells which), "
            "then send them again: `impactin replay --all-failed --company C`"
        )

"""Run the delivery job now, in-process, through Dagster: what `impactin run` and the demo do.

Same job, assets and tags as the schedule; runs are recorded in the instance at DAGSTER_HOME, so the Dagster UI
shows them next to scheduled ones, and the statistics are recomputed after them (`delivery_stats_job`).
"""

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from sqlalchemy.engine import Engine

from impactin_pipelines.defs.orchestration.partitions import COMPANY_PARTITIONS
from impactin_pipelines.defs.orchestration.planning import TRIGGER_TAG, PartitionRange, plan_ranges
from impactin_pipelines.domain.companies import is_valid_company_id
from impactin_pipelines.domain.providers import PROVIDERS, Provider
from impactin_pipelines.observability import log_format
from impactin_pipelines.services.extract import quarantine_unpartitionable
from impactin_pipelines.settings import LogSettings, state_dir
from impactin_pipelines.store.source import integrations

DELIVERY_JOB = "impact_delivery_job"
STATS_JOB = "delivery_stats_job"
DELIVERY_LOGGER = "impactin.delivery"  # observability.run_delivery_logger's default name
# The repository's dagster.yaml, linked into the package so an installed wheel carries it too.
INSTANCE_YAML = Path(__file__).parents[2] / "embedded_dagster.yaml"


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    success: bool
    partitions: PartitionRange
    error: str | None = None


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME, defaulting to the state folder; created with an instance config if missing."""
    home = Path(os.environ.get("DAGSTER_HOME") or state_dir() / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_YAML.read_text())
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def selected_partitions(
    engine: Engine, companies: Sequence[str] | None, providers: Sequence[str] | None
) -> tuple[list[str], list[str], list[str]]:
    """(companies, providers, problems): enabled integrations narrowed by the selection."""
    enabled = integrations(engine)
    problems: list[str] = []
    known_companies = sorted({i.company_id for i in enabled})
    chosen = list(companies) if companies else known_companies
    for company in chosen:
        if company not in known_companies:
            problems.append(f"company {company!r} has no enabled integration")
        elif not is_valid_company_id(company):
            problems.append(
                f"company_id {company!r} cannot be a Dagster partition key; skipped: "
                "its events are quarantined as failed/invalid_event, never delivered"
            )
    chosen = [c for c in chosen if c in known_companies and is_valid_company_id(c)]
    for i in enabled:
        if i.provider not in PROVIDERS and i.company_id in chosen:
            problems.append(
                f"company {i.company_id!r} has an integration with provider {i.provider!r}, "
                f"which is not one of {', '.join(PROVIDERS)}; ignored"
            )
    wanted = list(providers) if providers else list(PROVIDERS)
    return chosen, [p for p in PROVIDERS if p in wanted], problems


def run_delivery_job(
    engine: Engine,
    *,
    companies: Sequence[str],
    providers: Sequence[str],
    trigger: str = "cli",
    log_level: str = "WARNING",
) -> list[RunOutcome]:
    from impactin_pipelines.definitions import build_defs  # after the caller has set the environment

    # Each run's extraction does this too; here it also happens when no run is planned (say, only such companies).
    quarantine_unpartitionable(engine, [Provider(p) for p in providers])
    home = ensure_dagster_home()
    defs = build_defs()
    job = defs.resolve_job_def(DELIVERY_JOB)
    console = {"loggers": {"console": {"config": {"log_level": _console_level(log_level)}}}}
    outcomes = []
    with _open_instance(home) as instance, _one_line_per_record(instance):
        known = _ensure_company_partitions(instance, companies)
        for rng in plan_ranges(known, companies, providers):
            result = job.execute_in_process(
                instance=instance,
                tags=rng.tags(trigger),
                raise_on_error=False,
                run_config=console,
            )
            error = None
            if not result.success:
                failures = [e for e in result.all_events if e.is_step_failure]
                error = (
                    "; ".join(
                        (f.step_failure_data.error.message.strip() if f.step_failure_data.error else "step failed")
                        for f in failures
                    )
                    or "run failed"
                )
            outcomes.append(RunOutcome(result.run_id, result.success, rng, error))
        if outcomes:
            # As the stats sensor does after runs the daemon sees: statistics follow every delivery run.
            defs.resolve_job_def(STATS_JOB).execute_in_process(
                instance=instance, tags={TRIGGER_TAG: trigger}, raise_on_error=False, run_config=console
            )
    return outcomes


def _console_level(log_level: str) -> str:
    """The level of Dagster's own console logger in these runs. It writes text; with IMPACTIN_LOG_FORMAT=json the
    CLI's handler writes the run's `impactin` lines as JSON, so Dagster's console stays quiet (CRITICAL)."""
    return "CRITICAL" if log_format() == "json" else log_level


class _ShownByDagster(logging.Filter):
    """Drops `impactin` records that reach Dagster's run log: its console logger prints those already."""

    def __init__(self, run_log_level: int, python_log_level: int) -> None:
        super().__init__()
        self.run_log_level = run_log_level  # delivery lines enter the run log from here (IMPACTIN_RUN_LOG_LEVEL)
        self.python_log_level = python_log_level  # other `impactin` lines, from here (the instance's python_logs)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "impactin" and not record.name.startswith("impactin."):
            return True
        threshold = self.run_log_level if record.name == DELIVERY_LOGGER else self.python_log_level
        return record.levelno < threshold


@contextlib.contextmanager
def _one_line_per_record(instance: dg.DagsterInstance) -> Iterator[None]:
    """In text format both the CLI's stderr handler and Dagster's console logger would print each `impactin`
    line that enters the run log; while the runs execute, the stderr handler leaves those to Dagster."""
    if log_format() == "json" or "impactin" not in instance.managed_python_loggers:
        yield
        return
    levels = logging.getLevelNamesMapping()
    gate = _ShownByDagster(
        levels[LogSettings.from_env().run_log_level], levels.get((instance.python_log_level or "INFO").upper(), 0)
    )
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(gate)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(gate)


def _open_instance(home: Path) -> dg.DagsterInstance:
    """The instance at DAGSTER_HOME. Creating it initialises its SQLite storage on first use, which two processes
    starting at once on a fresh home would race on ("table runs already exists"): serialise just that step."""
    with open(home / ".instance.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return dg.DagsterInstance.get()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ensure_company_partitions(instance: dg.DagsterInstance, companies: Sequence[str]) -> Sequence[str]:
    """Add missing company partitions (the sensor does this too; a concurrent adder may win the race)."""
    known = instance.get_dynamic_partitions(COMPANY_PARTITIONS)
    present = set(known)
    missing = [c for c in companies if c not in present]
    if missing:
        # Another process may add some of them first; what matters is that they exist afterwards.
        with contextlib.suppress(Exception):
            instance.add_dynamic_partitions(COMPANY_PARTITIONS, missing)
        known = instance.get_dynamic_partitions(COMPANY_PARTITIONS)
        present = set(known)
        still_missing = [c for c in missing if c not in present]
        if still_missing:
            raise RuntimeError(f"could not add company partitions: {', '.join(still_missing)}")
    return known

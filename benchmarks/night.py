"""B1, a night: companies x 3 providers x events (default 1,000 x 3 x 30 = 90,000 deliveries) on PostgreSQL (the
warehouse and Dagster's storage), sandbox providers at 20 ms latency, IMPACTIN_DELIVERY_CONCURRENCY=8, Goodera's quota
raised out of the way, the default run-log level.

Product: the path the nightly schedule takes. The schedule is evaluated against the instance; each run request it
returns is executed as the daemon's run launcher would, a process of its own running the job, all at once
(`impactin run` executes the same job). Baseline, in the same run against the same sandbox: a bare loop, one
ThreadPoolExecutor per provider of `requests.post` (a pooled session) sending the same stored payloads with the same
headers and the same concurrency: no Dagster, no database.

Printed: wall time and CPU per delivery of both and their ratios (goals <= 1.5x and <= 2x), Dagster runs (<= 10),
peak RSS of the run processes together (<= 1 GB), and that every row was delivered once. `--profile DIR` records
each run process with py-spy (`pip install py-spy`) into DIR.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine.url import make_url

from benchmarks.common import Posted, SandboxProcess, post_concurrently
from benchmarks.pg import ADMIN_URL, SEED_COMPANY_EVENTS, company_ids, run_sql, scratch_postgres
from impactin_pipelines.security.crypto import generate_key

PROVIDERS = ("benevity", "goodera", "workday")
RUN_TIMEOUT_S = 3600

SEED_INTEGRATIONS = """
INSERT INTO company_integrations (company_id, provider, enabled, settings)
SELECT 'co' || lpad(c::text, 5, '0'), p, true, NULL
FROM generate_series(1, %(companies)s) AS c, unnest(ARRAY['benevity', 'goodera', 'workday']) AS p
"""


@contextmanager
def scratch_database() -> Iterator[str]:
    """An empty PostgreSQL database for Dagster's storage (psycopg2 URL, as dagster-postgres wants it)."""
    admin = sa.create_engine(make_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
    name = f"impactin_bench_dagster_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(ADMIN_URL).set(drivername="postgresql+psycopg2", database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _instance_yaml(dagster_url: str) -> str:
    return (
        "storage:\n  postgres:\n    postgres_url: " + json.dumps(dagster_url) + "\n"
        "python_logs:\n  managed_python_loggers: [impactin]\n  python_log_level: INFO\n"
        "telemetry:\n  enabled: false\n"
    )


class RssSampler:
    """Peak of the summed RSS of the given processes and their children, sampled from /proc."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> set[int]:
        found = set(self.pids)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid in found:
                found.add(int(entry.name))
        return found

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            total_kb = 0
            for pid in self._tree():
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total_kb += int(line.split()[1])
                except OSError:
                    continue
            self.peak_mb = max(self.peak_mb, total_kb / 1024)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _children_system_s() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime


def _night(env: dict[str, str], profile: Path | None) -> tuple[float, float, float, int]:
    """Evaluate the schedule, run its requests as processes at once; (wall s, CPU s, peak RSS MB, runs)."""
    started, cpu_before, system_before = time.perf_counter(), _children_cpu_s(), _children_system_s()
    plan = subprocess.run(
        [sys.executable, "-m", "benchmarks.night", "--evaluate-schedule"],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    if plan.returncode != 0:
        raise RuntimeError(f"evaluating the schedule failed:\n{plan.stderr[-3000:]}")
    requests_json = plan.stdout.strip().splitlines()[-1]
    run_requests = json.loads(requests_json)
    with RssSampler() as rss:
        procs = []
        for tags in run_requests:
            command = [sys.executable, "-m", "benchmarks.night", "--execute-run", json.dumps(tags)]
            if profile is not None:
                out = profile / f"{tags.get('impactin/provider', 'run')}.txt"
                command = [
                    "py-spy",
                    "record",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--gil",  # only the thread holding the GIL: each run is GIL-bound, so that is where time goes
                    "--subprocesses",
                    "-o",
                    str(out),
                    "--",
                    *command,
                ]
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            rss.pids.append(proc.pid)
            procs.append(proc)
        failures = []
        for proc in procs:
            _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
            if proc.returncode != 0:
                failures.append(err[-3000:])
    wall = time.perf_counter() - started
    if failures:
        raise RuntimeError("a run failed:\n" + "\n".join(failures))
    system = _children_system_s() - system_before
    print(f"  night CPU: {_children_cpu_s() - cpu_before:.1f} s, of which system {system:.1f} s", flush=True)
    return wall, _children_cpu_s() - cpu_before, rss.peak_mb, len(run_requests)


def _bare_loop(env: dict[str, str], url: str, concurrency: int) -> tuple[float, float, int]:
    """The stored payloads, prepared with each provider's headers beforehand, posted by one thread pool per
    provider at the same concurrency; (wall s, CPU s of this process, requests)."""
    os.environ.update(env)
    from impactin_pipelines.connectors.base import OutboundDelivery
    from impactin_pipelines.connectors.registry import ConnectorFactory
    from impactin_pipelines.domain.providers import Provider
    from impactin_pipelines.providers.env import ProviderEnv
    from impactin_pipelines.providers.workday.soap import OPERATION, soap_arguments
    from impactin_pipelines.store.engine import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:  # the sandbox was reset: the night's tokens are unknown to it now
        conn.execute(sa.text("DELETE FROM impact_provider_tokens"))
    factory = ConnectorFactory(engine, env=ProviderEnv.from_env(env))
    prepared: dict[str, list[Posted]] = {}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT delivery_id, company_id, provider, event_id, payload FROM impact_deliveries")
        ).all()
    for provider in PROVIDERS:
        mine = [r for r in rows if r.provider == provider]
        connector = factory.connector(mine[0].company_id, Provider(provider))
        extra: dict[str, str] = {}
        if provider == "goodera":
            extra["token"] = connector.oauth.token().access_token  # type: ignore[attr-defined]
        prepared[provider] = []
        for r in mine:
            delivery = OutboundDelivery(r.delivery_id, r.company_id, r.provider, r.event_id, r.payload)
            if provider == "workday":  # the signed envelope itself (prepare() masks the WS-Security digest)
                soap: Any = connector
                envelope = soap.client.create_message(soap.service, OPERATION, **soap_arguments(r.payload))
                request = soap._request(envelope, r.delivery_id)
            else:
                request = connector.prepare(delivery, **extra)  # type: ignore[call-arg]
            prepared[provider].append((request.url, dict(request.headers), request.body))
    factory.close()
    engine.dispose()

    started, cpu_before, system_before = time.perf_counter(), time.process_time(), os.times().system
    with ThreadPoolExecutor(len(prepared)) as providers:
        list(providers.map(lambda items: post_concurrently(items, concurrency), prepared.values()))
    cpu = time.process_time() - cpu_before
    print(f"  bare loop CPU: {cpu:.1f} s, of which system {os.times().system - system_before:.1f} s", flush=True)
    return time.perf_counter() - started, cpu, sum(len(v) for v in prepared.values())


def _evaluate_schedule() -> None:
    """In a child process (the environment is the night's): the schedule's run requests, as JSON tags."""
    import dagster as dg

    from impactin_pipelines.definitions import build_defs

    defs = build_defs()
    repository = defs.get_repository_def()
    schedule = repository.get_schedule_def("nightly_delivery_schedule")
    with (
        dg.DagsterInstance.get() as instance,
        dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime.now(UTC),
            repository_def=repository,
            resources={"warehouse": defs.resources["warehouse"]},
        ) as context,
    ):
        result = schedule.evaluate_tick(context)
    assert result.run_requests, result.skip_message
    print(json.dumps([dict(r.tags) for r in result.run_requests]))


def _execute_run(tags: dict[str, str]) -> None:
    """In a child process: one run request executed as a run worker would (the job, in this process)."""
    import dagster as dg

    from impactin_pipelines.definitions import build_defs

    job = build_defs().resolve_job_def("impact_delivery_job")
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    if not result.success:
        sys.exit(f"run {result.run_id} failed")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--companies", type=int, default=1000)
    parser.add_argument("--events", type=int, default=30, help="events per company (each goes to 3 providers)")
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--profile", type=Path, help="record each run with py-spy into this folder")
    parser.add_argument("--evaluate-schedule", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--execute-run", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.evaluate_schedule:
        _evaluate_schedule()
        return {}
    if args.execute_run:
        _execute_run(json.loads(args.execute_run))
        return {}

    load = os.getloadavg()
    with (
        scratch_postgres() as (engine, url),
        scratch_database() as dagster_url,
        SandboxProcess() as sandbox,
        tempfile.TemporaryDirectory(prefix="impactin-night-") as tmp,
    ):
        run_sql(engine, SEED_COMPANY_EVENTS, prefix="co", digits=5, companies=args.companies, events=args.events)
        run_sql(engine, SEED_INTEGRATIONS, companies=args.companies)
        home = Path(tmp) / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text(_instance_yaml(dagster_url))
        big = 10_000_000
        for provider in PROVIDERS:
            sandbox.configure(provider, {"latency_ms": args.latency_ms})
        sandbox.configure("goodera", {"rate_limit": {"limit": big, "window_s": 60}})
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BENEVITY_", "GOODERA_", "WORKDAY_"))}
        env.update(sandbox.env)
        env.update(
            IMPACTIN_WAREHOUSE_URL=url,
            IMPACTIN_STATE_DIR=tmp,
            IMPACTIN_ENCRYPTION_KEY=generate_key(),
            IMPACTIN_DELIVERY_CONCURRENCY=str(args.concurrency),
            GOODERA_RATE_LIMIT=f"{big}/minute",
            DAGSTER_HOME=str(home),
        )
        env.pop("IMPACTIN_RUN_LOG_LEVEL", None)  # the default level
        companies = company_ids("co", 5, args.companies)
        subprocess.run([sys.executable, "-c", _ADD_PARTITIONS, json.dumps(companies)], env=env, check=True, timeout=600)
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            if shutil.which("py-spy") is None:
                raise SystemExit("--profile needs py-spy on PATH (pip install py-spy)")

        wall, cpu, rss_mb, planned = _night(env, args.profile)
        seen = {p: sandbox.requests_seen(p) for p in PROVIDERS}
        accepted = sum(len(s["accepted"]) for s in seen.values())
        with engine.connect() as conn:
            statuses = dict(conn.execute(sa.text("SELECT status, count(*) FROM impact_deliveries GROUP BY 1")).all())
            attempts = conn.execute(sa.text("SELECT count(*) FROM impact_delivery_attempts")).scalar_one()
        dagster_engine = sa.create_engine(dagster_url)
        with dagster_engine.connect() as conn:
            runs = conn.execute(sa.text("SELECT count(*) FROM runs")).scalar_one()
        dagster_engine.dispose()

        sandbox.reset()
        for provider in PROVIDERS:
            sandbox.configure(provider, {"latency_ms": args.latency_ms})
        sandbox.configure("goodera", {"rate_limit": {"limit": big, "window_s": 60}})
        bare_wall, bare_cpu, sent = _bare_loop(env, url, args.concurrency)

    total = args.companies * args.events * len(PROVIDERS)
    print(
        f"night: {args.companies} companies x {len(PROVIDERS)} providers x {args.events} events = {total} deliveries, "
        f"{args.latency_ms:g} ms latency, concurrency {args.concurrency} per provider, PostgreSQL "
        f"(load average at start {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})"
    )
    print(f"  bare loop:  {bare_wall:7.1f} s wall, {bare_cpu / sent * 1000:6.2f} ms CPU per request ({sent} requests)")
    print(
        f"  night:      {wall:7.1f} s wall, {cpu / total * 1000:6.2f} ms CPU per delivery "
        f"({planned} run requests from the schedule, {runs} Dagster runs, peak RSS {rss_mb:.0f} MB)"
    )
    print(
        f"  ratio wall: {wall / bare_wall:6.2f}x (goal <= 1.5x)   ratio CPU per delivery: "
        f"{(cpu / total) / (bare_cpu / sent):6.2f}x (goal <= 2x)"
    )
    once = accepted == total and statuses.get("success") == total and attempts == total
    print(f"  delivered once: {once} (accepted {accepted}, rows {statuses}, attempts {attempts})")
    return {
        "wall_ratio": wall / bare_wall,
        "cpu_ratio": (cpu / total) / (bare_cpu / sent),
        "runs": float(runs),
        "rss_mb": rss_mb,
        "night_s": wall,
        "bare_s": bare_wall,
        "delivered_once": float(once),
    }


_ADD_PARTITIONS = """
import json, sys
import dagster as dg
from impactin_pipelines.defs.orchestration.partitions import COMPANY_PARTITIONS
with dg.DagsterInstance.get() as instance:
    instance.add_dynamic_partitions(COMPANY_PARTITIONS, json.loads(sys.argv[1]))
"""


if __name__ == "__main__":
    main()

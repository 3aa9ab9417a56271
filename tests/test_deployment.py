"""The production deployment, for real, on loopback: `deploy/loopback.py` (what `make prod-up` runs) starts a gRPC
code server, the webserver and the daemon as separate processes on PostgreSQL storage with deploy/dagster.yaml;
the daemon's nightly schedule (cron every minute here) splits each provider's night into 3 range runs
(IMPACTIN_RUNS_PER_PROVIDER), the run queue launches them through the code server, and every event reaches its
provider exactly once. `deploy/loopback.py down` (`make prod-down`) stops everything, runs included."""

import importlib.util
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.engine.url import make_url

from impactin_pipelines.defs.orchestration.partitions import split_key
from impactin_pipelines.defs.orchestration.planning import PROVIDER_TAG, RANGE_END_TAG, RANGE_START_TAG, SLICE_TAG
from impactin_pipelines.providers.goodera.fake import max_in_window
from impactin_pipelines.store import migrations
from impactin_pipelines.store.engine import make_engine
from tests.conftest import ADMIN_URL, fresh_postgres_url
from tests.reliability.ledger import BY_NAME, read
from tests.support import add_events, add_integration, events

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = [sys.executable, str(ROOT / "deploy" / "loopback.py")]
COMPANIES = [f"co{i:02d}" for i in range(1, 7)]
# Goodera's night is split three ways; Benevity's and Workday's (one company each) stay one run: every run costs a
# handful of processes (the run and its steps), and this machine has two cores.
WORK = {"benevity": COMPANIES[:1], "goodera": COMPANIES, "workday": COMPANIES[-1:]}
RUNS = {"benevity": 1, "goodera": 3, "workday": 1}
EVENTS_PER_COMPANY = 4
RUNS_PER_PROVIDER = 3
GOODERA_QUOTA = {"limit": 8, "window_s": 2.0}  # tight enough that three runs at once would overrun it unshared
SCHEDULE = "nightly_delivery_schedule"
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
REPOSITORIES = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
    schedules { id name } sensors { id name } } } } }"""
STOP_SCHEDULE = """mutation($id: String) { stopRunningSchedule(id: $id) {
    __typename ... on ScheduleStateResult { scheduleState { status } } ... on PythonError { message } } }"""
STOP_SENSOR = """mutation($id: String) { stopSensor(id: $id) {
    __typename ... on StopSensorMutationResult { instigationState { status } } ... on PythonError { message } } }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dagster_storage_url() -> Iterator[str]:
    """A fresh database for Dagster's runs, events and schedules, dropped afterwards."""
    admin = sa.create_engine(make_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
    name = f"impactin_deploy_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(ADMIN_URL).set(drivername="postgresql+psycopg2", database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _graphql(port: int, query: str, **variables: Any) -> dict[str, Any]:
    body = requests.post(
        f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables}, timeout=60
    ).json()
    assert "errors" not in body, body
    return body["data"]


def _stop_instigators(port: int, schedules: set[str], sensors: set[str]) -> None:
    [repo] = _graphql(port, REPOSITORIES)["repositoriesOrError"]["nodes"]
    for schedule in (s for s in repo["schedules"] if s["name"] in schedules):
        result = _graphql(port, STOP_SCHEDULE, id=schedule["id"])["stopRunningSchedule"]
        assert result.get("scheduleState", {}).get("status") == "STOPPED", result
    for sensor in (s for s in repo["sensors"] if s["name"] in sensors):
        result = _graphql(port, STOP_SENSOR, id=sensor["id"])["stopSensor"]
        assert result.get("instigationState", {}).get("status") == "STOPPED", result


def _delivery_runs(instance: dg.DagsterInstance) -> list[dg.RunRecord]:
    return list(
        instance.get_run_records(
            filters=dg.RunsFilter(job_name="impact_delivery_job", tags={"dagster/schedule_name": SCHEDULE})
        )
    )


def _companies_of(run: dg.DagsterRun) -> list[str]:
    (first, _), (last, _) = split_key(run.tags[RANGE_START_TAG]), split_key(run.tags[RANGE_END_TAG])
    return COMPANIES[COMPANIES.index(first) : COMPANIES.index(last) + 1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _loopback() -> Any:
    """deploy/loopback.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("impactin_deploy_loopback", ROOT / "deploy" / "loopback.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ignores(pid: int, signum: int) -> bool:
    ignored = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigIgn:"))
    return bool(int(ignored.split()[1], 16) >> (signum - 1) & 1)


def test_down_stops_what_up_started_even_under_a_parent_that_ignores_sigterm(tmp_path) -> None:
    """A process started by a parent that ignores SIGTERM (a container's PID 1, a background job) inherits the
    ignore, and `down` could then only kill it. `up` gives its children the default back; one that ignores SIGTERM
    by itself is killed after the grace period, and `down` returns only once it is gone."""
    loopback = _loopback()
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)",
    ]
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        polite = loopback._start(tmp_path, "polite", sleeper, os.environ)
        deaf = loopback._start(tmp_path, "deaf", stubborn, os.environ)
    finally:
        signal.signal(signal.SIGTERM, previous)
    reapers = [threading.Thread(target=proc.wait, daemon=True) for proc in (polite, deaf)]  # as init would
    for reaper in reapers:
        reaper.start()
    try:
        assert not _ignores(polite.pid, signal.SIGTERM)
        time.sleep(1)  # the stubborn one has installed its own ignore
        assert _ignores(deaf.pid, signal.SIGTERM)
        assert loopback.down(tmp_path, grace_s=1.0) == 0
        assert not _group_alive(polite.pid) and not _group_alive(deaf.pid)  # gone when `down` returns
        for reaper in reapers:
            reaper.join(timeout=10)
        assert polite.returncode == -signal.SIGTERM  # stopped, not killed
        assert deaf.returncode == -signal.SIGKILL
        assert not list((tmp_path / "pids").glob("*.pid"))
    finally:
        for proc in (polite, deaf):
            if proc.poll() is None:
                proc.kill()


def _logs(folder: Path) -> str:
    return "\n".join(
        f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        for log in sorted((folder / "logs").glob("*.log"))
    )


@pytest.mark.postgres
def test_the_daemons_schedule_splits_the_night_and_runs_it_through_the_code_server(
    tmp_path, postgres_database, dagster_storage_url, sandbox, monkeypatch
) -> None:
    warehouse_url = fresh_postgres_url(postgres_database)
    engine = make_engine(warehouse_url)
    migrations.upgrade(engine)
    for provider, companies in WORK.items():
        for company in companies:
            add_integration(engine, company, provider)
    add_events(engine, [e for company in COMPANIES for e in events(company, EVENTS_PER_COMPANY)])
    sandbox.providers["goodera"].configure({"rate_limit": GOODERA_QUOTA})

    folder = tmp_path / "prod"
    home = folder / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text((ROOT / "deploy" / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", dagster_storage_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENEVITY_", "GOODERA_", "WORKDAY_"))}
    env.update(
        sandbox.env(),
        DAGSTER_POSTGRES_URL=dagster_storage_url,
        IMPACTIN_WAREHOUSE_URL=warehouse_url,
        IMPACTIN_ENCRYPTION_KEY="n3SsmO2cM9e1Xg7Hcm0qgW9yGx5dB3wWcwJ2Y2pS6gY=",
        IMPACTIN_SCHEDULE_CRON="* * * * *",
        IMPACTIN_RUNS_PER_PROVIDER=str(RUNS_PER_PROVIDER),
        IMPACTIN_RETRY_INITIAL_DELAY_S="0.01",
        IMPACTIN_RETRY_MAX_DELAY_S="0.05",
        IMPACTIN_RUN_LOG_LEVEL="WARNING",
    )
    webserver, code_server = _free_port(), _free_port()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # The company sensor would add these on its first tick; added first so the first schedule tick sees them all.
        instance.add_dynamic_partitions("company", COMPANIES)
        up = subprocess.run(
            [*LOOPBACK, "up", "--dir", str(folder), "--webserver-port", str(webserver),
             "--code-server-port", str(code_server), "--timeout", "150"],
            env=env, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        try:
            assert up.returncode == 0, f"{up.stdout}\n{up.stderr}\n{_logs(folder)}"
            assert requests.get(f"http://127.0.0.1:{webserver}/server_info", timeout=10).ok
            # Runs after a delivery run would only add load here; the schedule is stopped after its first tick.
            _stop_instigators(webserver, set(), {"stats_after_delivery_sensor"})
            expected = sum(RUNS.values())
            deadline = time.monotonic() + 480  # the next minute boundary, then the runs (a bound, not a goal)
            while len(_delivery_runs(instance)) < expected:
                assert time.monotonic() < deadline, (
                    f"the schedule launched {len(_delivery_runs(instance))} runs\n{_logs(folder)}"
                )
                time.sleep(1)
            _stop_instigators(webserver, {SCHEDULE}, set())
            while not all(r.dagster_run.status in FINISHED for r in _delivery_runs(instance)):
                assert time.monotonic() < deadline, f"runs did not finish in time\n{_logs(folder)}"
                time.sleep(1)
            records = _delivery_runs(instance)
        finally:
            groups = {p.stem: int(p.read_text()) for p in (folder / "pids").glob("*.pid")}
            down = subprocess.run(
                [*LOOPBACK, "down", "--dir", str(folder)], capture_output=True, text=True, timeout=180, check=False
            )
        assert down.returncode == 0, down.stderr
        assert sorted(groups) == ["code-server", "daemon", "webserver"]  # providers given: no sandbox started
        assert not [name for name, pgid in groups.items() if _group_alive(pgid)], "a process was left running"

    assert len(records) == sum(RUNS.values()), [r.dagster_run.tags for r in records]
    assert {r.dagster_run.status for r in records} == {dg.DagsterRunStatus.SUCCESS}, _logs(folder)
    by_provider: dict[str, list[dg.RunRecord]] = defaultdict(list)
    for record in records:
        run = record.dagster_run
        by_provider[run.tags[PROVIDER_TAG]].append(record)
        assert run.remote_job_origin is not None
        origin = run.remote_job_origin.repository_origin.code_location_origin
        # the gRPC origin class is internal to dagster: its port is read by name
        assert (type(origin).__name__, getattr(origin, "port", None), origin.location_name) == (
            "GrpcServerCodeLocationOrigin",
            code_server,
            "impactin",
        )
    assert {p: len(rs) for p, rs in by_provider.items()} == RUNS
    split = sorted((r.dagster_run for r in by_provider["goodera"]), key=lambda run: run.tags[SLICE_TAG])
    assert [run.tags[SLICE_TAG] for run in split] == ["1/3", "2/3", "3/3"]
    assert [c for run in split for c in _companies_of(run)] == COMPANIES, "not a disjoint cover of the night"
    for provider in ("benevity", "workday"):
        [single] = by_provider[provider]
        assert SLICE_TAG not in single.dagster_run.tags and _companies_of(single.dagster_run) == WORK[provider]
    spans: list[tuple[float, float]] = []
    for record in by_provider["goodera"]:
        assert record.start_time is not None and record.end_time is not None  # every run has finished
        spans.append((record.start_time, record.end_time))
    spans.sort()
    assert any(start < end for (_, end), (start, _) in itertools.pairwise(spans)), (
        "no two Goodera runs ran at the same time: the tag limit serialised them"
    )

    for case in ("benevity", "goodera", "workday_soap"):
        read(engine, sandbox, BY_NAME[case], "deployment", runs=RUNS_PER_PROVIDER).check()
    goodera = sandbox.providers["goodera"]
    assert goodera.rate_limited == 0, "the runs overran Goodera's quota: the bucket was not shared"
    assert max_in_window(goodera.admitted_at, GOODERA_QUOTA["window_s"]) <= GOODERA_QUOTA["limit"]
    engine.dispose()

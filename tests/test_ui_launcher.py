"""`impactin ui` (what `make ui` runs): the Dagster UI and the sandbox together, with the provider variables set. A
backfill launched the UI's way (GraphQL `launchPartitionBackfill` on the delivery assets, run by the real daemon as
the implicit asset job) delivers, holds the one-run-per-provider limit, is followed by statistics; no warning a user
cannot act on is printed; Ctrl-C (SIGINT) stops everything."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import dagster as dg
import requests

from impactin_pipelines.defs.orchestration.runner import INSTANCE_YAML
from impactin_pipelines.store import migrations
from impactin_pipelines.store.engine import make_engine
from tests.support import add_events, add_integration, events, statuses

LOCATION_QUERY = """{ workspaceOrError { ... on Workspace {
  locationEntries { name locationOrLoadError { __typename } } } } }"""
BACKFILL = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
PARTITIONS = ["acme|benevity", "acme|goodera", "initech|benevity"]
T = TypeVar("T")
NOISE = ("BetaWarning", "SupersessionWarning", "Found a dagster instance configuration", "Traceback")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    reply = requests.post(
        f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
    )
    return reply.json()["data"]


def _until(what: str, check: Callable[[], T | None], proc: subprocess.Popen, timeout: float, log: Path) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"impactin ui exited:\n{log.read_text()[-3000:]}"
        try:
            found = check()
        except (requests.RequestException, KeyError, TypeError):
            found = None
        if found:
            return found
        time.sleep(2)
    raise AssertionError(f"{what}: not in {timeout:.0f}s\n{log.read_text()[-3000:]}")


def test_impactin_ui_serves_a_backfill_from_the_ui_as_a_first_class_run(tmp_path) -> None:
    state = tmp_path / "state"
    home = state / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(INSTANCE_YAML.read_text())
    warehouse = make_engine(f"sqlite:///{state / 'warehouse.db'}")
    migrations.upgrade(warehouse)
    for company, provider in [("acme", "benevity"), ("acme", "goodera"), ("initech", "benevity")]:
        add_integration(warehouse, company, provider)
    add_events(warehouse, events("acme", 2) + events("initech", 2))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("company", ["acme", "initech"])

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(IMPACTIN_STATE_DIR=str(state), IMPACTIN_RETRY_INITIAL_DELAY_S="0.01", PYTHONUNBUFFERED="1")
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "impactin_pipelines.cli", "ui", "--port", str(port)],
            env=env,
            cwd=Path(__file__).resolve().parents[1],  # the repository root, with its own dagster.yaml
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def location_loaded() -> bool:
            entries = _graphql(port, LOCATION_QUERY)["workspaceOrError"]["locationEntries"]
            loaded = {e["name"] for e in entries if e["locationOrLoadError"]["__typename"] == "RepositoryLocation"}
            return "impactin" in loaded

        _until("the code location named impactin", location_loaded, proc, 240, log)
        params = {"assetSelection": [{"path": ["impact_outbox"]}, {"path": ["impact_deliveries"]}]}
        launched = _graphql(port, BACKFILL, {"p": {**params, "partitionNames": PARTITIONS}})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched

        with dg.DagsterInstance.from_config(str(home)) as instance:

            def backfill_done() -> list[dg.RunRecord] | None:
                records = [
                    r
                    for r in instance.get_run_records()
                    if r.dagster_run.tags.get("dagster/backfill") == launched["backfillId"]
                ]
                finished = [r for r in records if r.dagster_run.is_finished]
                return records if len(records) == len(PARTITIONS) == len(finished) else None

            runs = _until("the backfill's runs", backfill_done, proc, 900, log)
            assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in runs)
            assert {r.dagster_run.job_name for r in runs} == {"__ASSET_JOB"}
            assert sorted(r.dagster_run.tags["dagster/partition"] for r in runs) == sorted(PARTITIONS)
            benevity = sorted(
                (r.start_time or 0, r.end_time or 0)
                for r in runs
                if r.dagster_run.tags["dagster/partition/provider"] == "benevity"
            )
            assert len(benevity) == 2 and benevity[0][1] <= benevity[1][0], f"benevity runs overlapped: {benevity}"
            # the provider variables reached the runs: the sandbox accepted every event
            assert statuses(warehouse) == {"success": 6}

            def stats_after() -> bool:
                [deliveries] = instance.fetch_materializations(dg.AssetKey("impact_deliveries"), limit=1).records
                stats = instance.fetch_materializations(dg.AssetKey("delivery_stats"), limit=1).records
                return bool(stats) and stats[0].storage_id > deliveries.storage_id

            _until("delivery_stats after the backfill", stats_after, proc, 300, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        deadline = time.monotonic() + 60
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(1)
        outlived = _group_alive(proc.pid)
        if outlived:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert code == 0, output[-3000:]
    assert not [n for n in NOISE if n in output], output[-3000:]
    assert "sandbox providers on http://127.0.0.1:" in output
    assert not outlived, "a process of impactin ui outlived it"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True

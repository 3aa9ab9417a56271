"""The code location loads in the real Dagster webserver, as `dagster dev` and production serve it."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
QUERY = """{ repositoriesOrError { ... on RepositoryConnection {
    nodes { jobs { name } schedules { name } sensors { name } } } } }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_webserver_serves_the_code_location(tmp_path, monkeypatch) -> None:
    port = _free_port()
    env_home = tmp_path / "dagster_home"
    env_home.mkdir()
    (env_home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(env_home))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster_webserver",
            "-w",
            str(ROOT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                info = requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).json()
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else "webserver exited"
                assert time.monotonic() < deadline, "webserver did not come up"
                time.sleep(0.5)
        assert info["dagster_version"].startswith("1.13")
        data = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": QUERY}, timeout=60).json()["data"]
        [repo] = data["repositoriesOrError"]["nodes"]
        assert {"impact_delivery_job", "delivery_stats_job"} <= {j["name"] for j in repo["jobs"]}
        assert "nightly_delivery_schedule" in {s["name"] for s in repo["schedules"]}
        assert "company_partitions_sensor" in {s["name"] for s in repo["sensors"]}
    finally:
        proc.terminate()
        proc.wait(timeout=30)

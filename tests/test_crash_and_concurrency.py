"""`impactin run` run twice reports what it did and sends nothing the second time. Both backends.

The crash and concurrency proofs that lived here (SIGKILL mid-run, two runs of one partition at once) moved to the
fault-injection suite, tests/reliability/test_process_faults.py, which runs them for every provider."""

import json

import pytest

from tests.cli_support import cli_env, run_cli
from tests.support import add_events, add_integration, events


@pytest.mark.parametrize("twice", [2])
def test_run_is_idempotent_and_reports(engine, warehouse_url, sandbox, tmp_path, twice: int) -> None:
    add_integration(engine, "acme", "benevity")
    add_integration(engine, "globex", "benevity")
    add_events(engine, events("acme", 3) + events("globex", 2))
    env = cli_env(tmp_path, warehouse_url, sandbox)
    results = [run_cli(["run", "--json"], env) for _ in range(twice)]
    assert all(r.returncode == 0 for r in results), results[-1].stderr[-2000:]
    first, second = (json.loads(r.stdout) for r in results)
    by_company = {p["company"]: p for p in first["partitions"]}
    assert by_company["acme"]["deliveredThisRun"] == 3 and by_company["globex"]["deliveredThisRun"] == 2
    assert all(p["attemptsThisRun"] == 0 and p["success"] > 0 for p in second["partitions"])
    assert len(sandbox.providers["benevity"].snapshot()["requests"]) == 5
    text = run_cli(["run"], env)
    assert "company" in text.stdout and "acme" in text.stdout and "total" in text.stdout

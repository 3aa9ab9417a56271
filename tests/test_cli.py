"""The operator's commands, run as a subprocess: db upgrade, deliveries list/show, stats, demo."""

import json
import shlex
import signal
import subprocess
import sys

import pytest

from tests.cli_support import cli_env, run_cli
from tests.support import add_events, add_integration, events


def test_db_upgrade_twice_then_status(warehouse_url, tmp_path) -> None:
    env = cli_env(tmp_path, warehouse_url)
    first = run_cli(["db", "upgrade", "--json"], env)
    second = run_cli(["db", "upgrade", "--json"], env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr
    assert json.loads(first.stdout)["applied"][0] == "0001_initial"
    assert json.loads(second.stdout)["applied"] == []
    assert json.loads(second.stdout)["version"] == json.loads(first.stdout)["version"]
    status = json.loads(run_cli(["db", "status", "--json"], env).stdout)
    assert status["pending"] == []


def test_commands_refuse_an_unmigrated_warehouse(tmp_path) -> None:
    env = cli_env(tmp_path, f"sqlite:///{tmp_path / 'empty.db'}")
    result = run_cli(["deliveries", "list"], env)
    assert result.returncode != 0 and "impactin db upgrade" in result.stderr


def test_list_show_and_stats(engine, warehouse_url, sandbox, tmp_path) -> None:
    add_integration(engine, "acme", "benevity")
    add_integration(engine, "globex", "benevity")
    add_events(engine, events("acme", 3) + events("globex", 2))
    sandbox.providers["benevity"].configure({"reject_events": ["evt_globex_00001"]})
    env = cli_env(tmp_path, warehouse_url, sandbox)
    assert run_cli(["run"], env).returncode == 0

    listed = json.loads(run_cli(["deliveries", "list", "--json", "--limit", "2"], env).stdout)
    assert listed["pagination"] == {"page": 1, "limit": 2, "total": 5, "totalPages": 3}
    assert len(listed["data"]) == 2
    failed = json.loads(run_cli(["deliveries", "list", "--json", "--status", "failed"], env).stdout)
    assert [r["event_id"] for r in failed["data"]] == ["evt_globex_00001"]
    only_acme = json.loads(run_cli(["deliveries", "list", "--json", "--company", "acme"], env).stdout)
    assert {r["company_id"] for r in only_acme["data"]} == {"acme"} and only_acme["pagination"]["total"] == 3
    future = json.loads(run_cli(["deliveries", "list", "--json", "--since", "2999-01-01"], env).stdout)
    assert future["pagination"]["total"] == 0
    bad_date = run_cli(["deliveries", "list", "--since", "yesterday"], env)
    assert bad_date.returncode == 2 and "'yesterday'" in bad_date.stderr

    row_id = failed["data"][0]["id"]
    shown = json.loads(run_cli(["deliveries", "show", row_id, "--json"], env).stdout)
    assert shown["status"] == "failed" and shown["error_kind"] == "rejected"
    assert [a["http_status"] for a in shown["attempts"]] == [422]
    assert json.loads(shown["payload"])["event"]["id"] == "evt_globex_00001"
    by_delivery_id = json.loads(run_cli(["deliveries", "show", shown["delivery_id"], "--json"], env).stdout)
    assert by_delivery_id["id"] == row_id
    text = run_cli(["deliveries", "show", row_id], env).stdout
    assert "HTTP 422" in text and "attempts:" in text
    missing = run_cli(["deliveries", "show", "no-such-id"], env)
    assert missing.returncode == 1 and "not found" in missing.stderr

    stats = json.loads(run_cli(["stats", "--json"], env).stdout)["data"]
    assert (stats["overall"]["total"], stats["overall"]["successful"], stats["overall"]["failed"]) == (5, 4, 1)
    assert {(r["provider"], r["status"], r["count"]) for r in stats["byProvider"]} >= {("benevity", "success", 4)}
    acme_stats = json.loads(run_cli(["stats", "--json", "--company", "acme"], env).stdout)["data"]
    assert acme_stats["overall"]["total"] == 3


def test_demo_works_twice_from_a_fresh_folder(tmp_path) -> None:
    env = cli_env(tmp_path, "", IMPACTIN_STATE_DIR=str(tmp_path / ".impactin"))
    env.pop("IMPACTIN_WAREHOUSE_URL")
    env.pop("DAGSTER_HOME")
    env.pop("IMPACTIN_ENCRYPTION_KEY")
    runs = [run_cli(["demo"], env, cwd=tmp_path, timeout=300) for _ in range(2)]
    for result in runs:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "benevity" in result.stdout and "total" in result.stdout
    assert runs[0].stdout.count("\n") == runs[1].stdout.count("\n")
    assert (tmp_path / ".impactin" / "warehouse.db").exists()
    assert (tmp_path / ".impactin" / "dagster_home" / "dagster.yaml").exists()
    env["IMPACTIN_STATE_DIR"] = str(tmp_path / ".impactin")
    listed = json.loads(run_cli(["deliveries", "list", "--json", "--status", "failed"], env, cwd=tmp_path).stdout)
    assert {r["error_kind"] for r in listed["data"]} == {"invalid_event"}


def test_commands_import_only_what_they_use(tmp_path) -> None:
    """`impactin --help` and the store-only commands start without zeep, Dagster or the API server."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from impactin_pipelines.cli import cli\n"
        "try:\n"
        "    cli(sys.argv[1:], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = {'zeep', 'dagster', 'starlette', 'uvicorn', 'pandas', 'requests_oauthlib'}\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & heavy))\n"
    )
    env = cli_env(tmp_path, f"sqlite:///{tmp_path / 'w.db'}")
    for args in (["--help"], ["db", "upgrade"], ["deliveries", "list"], ["stats"]):
        result = subprocess.run(
            [sys.executable, "-c", probe, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == "[]", (args, result.stdout)


def test_help_lists_every_command_with_a_help_line_and_each_one_loads() -> None:
    from click import Context
    from click.testing import CliRunner

    from impactin_pipelines.cli import COMMANDS, cli

    shown = CliRunner().invoke(cli, ["--help"]).output
    for name, (_target, summary) in COMMANDS.items():
        assert f"  {name} " in shown and summary in shown
        command = cli.get_command(Context(cli), name)
        assert command is not None and command.name == name


@pytest.mark.parametrize("name", ["TERM", "INT"])
def test_the_sandbox_stops_on_a_signal_even_when_it_inherited_an_ignore(name: str) -> None:
    """As PID 1 of a container, started in the background, or by a parent that ignores the signal, a process without
    a handler of its own would keep running after `docker stop`, a benchmark's terminate() or a `kill -INT`."""
    command = f"trap '' {name}; exec {shlex.quote(sys.executable)} -m impactin_pipelines.cli sandbox --port 0"
    proc = subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("# sandbox ready at "):
                break
        else:
            raise AssertionError("the sandbox exited before announcing its address")
        proc.send_signal(getattr(signal, f"SIG{name}"))
        assert proc.wait(timeout=60) == 0  # stopped cleanly, through the same path as Ctrl-C
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

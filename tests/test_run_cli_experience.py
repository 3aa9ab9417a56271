"""What a user sees from `impactin run`, `impactin replay --all-failed` and the demo's hints: progress per provider
(redrawn on a terminal, plain lines otherwise), one line per log record, configuration failures said and exited
on, and hints that run as printed from the repository root without an activated virtual environment."""

import io
import json
import os
import pty
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from impactin_pipelines.cli.demo import command_path
from impactin_pipelines.cli.progress import Progress
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.services.extract import extract
from impactin_pipelines.services.replay import replay_all_failed
from impactin_pipelines.store.progress import ProviderProgress, delivery_progress, failed_counts, replay_progress
from tests.cli_support import IMPACTIN, cli_env, run_cli
from tests.support import add_events, add_integration, deliver, events, factory_for, rows, statuses

ROOT = Path(__file__).resolve().parents[1]
ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _url(engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def test_run_says_configuration_failures_and_exits_1_with_one_line_per_record(sqlite_engine, tmp_path) -> None:
    add_integration(sqlite_engine, "acme", "benevity")
    add_events(sqlite_engine, events("acme", 2))
    result = run_cli(["run"], cli_env(tmp_path, _url(sqlite_engine)), timeout=300)  # no provider variables
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 row(s) failed for configuration (nothing was sent): acme/benevity 2" in result.stdout
    assert statuses(sqlite_engine) == {"failed": 2}
    for row in rows(sqlite_engine):
        lines = [line for line in result.stderr.splitlines() if row["delivery_id"] in line]
        assert len(lines) == 1, lines  # Dagster's console logger prints it; the CLI's handler leaves it be
    again = run_cli(["run", "--json"], cli_env(tmp_path, _url(sqlite_engine)), timeout=300)
    assert again.returncode == 0, again.stderr  # nothing new failed for configuration in this run


def test_run_on_a_terminal_redraws_progress_per_provider(sqlite_engine, sandbox, tmp_path) -> None:
    add_integration(sqlite_engine, "acme", "benevity")
    add_events(sqlite_engine, events("acme", 30))
    sandbox.providers["benevity"].configure({"latency_ms": 150})  # about 5 s of sending at 1 request at a time
    env = cli_env(tmp_path, _url(sqlite_engine), sandbox, IMPACTIN_DELIVERY_CONCURRENCY="1")
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([*IMPACTIN, "run"], env=env, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    assert proc.wait(timeout=60) == 0, seen.decode(errors="replace")[-3000:]
    text = seen.decode(errors="replace")
    assert "\r\x1b[2K" in text  # the status line redrawn in place
    drawn = [ESCAPE.sub("", line) for line in re.split(r"[\r\n]+", text) if "/s" in line]
    under_way = r"^benevity \d+/30 [\d.]+/s ETA \d"
    finished = r"benevity\s+30/30 \(100%\)\s+30 delivered\s+[\d.]+/s\s+done"
    assert any(re.search(under_way, d) for d in drawn), drawn
    assert any(re.search(finished, d) for d in drawn), drawn


def test_progress_off_a_terminal_is_plain_lines_from_the_warehouse(engine, sandbox) -> None:
    for provider in ("benevity", "goodera"):
        add_integration(engine, "acme", provider)
    add_events(engine, events("acme", 4))
    for provider in (Provider.BENEVITY, Provider.GOODERA):
        extract(engine, "acme", provider)
    started = datetime.now(UTC)
    out = io.StringIO()

    def sample() -> dict[str, ProviderProgress]:
        return delivery_progress(engine, started, datetime.now(UTC), company_ids=["acme"])

    assert {p: (s.done, s.total) for p, s in sample().items()} == {"benevity": (0, 4), "goodera": (0, 4)}
    factory = factory_for(engine, sandbox)
    try:
        with Progress(sample, stream=out, interval=0.05, plain_every=0, terminal=False):
            deliver(engine, factory, "benevity")
            deliver(engine, factory, "goodera")
    finally:
        factory.close()
    lines = out.getvalue().splitlines()
    assert lines and all(line.startswith("progress: ") for line in lines)
    assert "\x1b" not in out.getvalue()
    assert re.search(r"progress: benevity\s+4/4 \(100%\)\s+4 delivered\s+[\d.]+/s\s+done", out.getvalue())
    assert re.search(r"progress: goodera\s+4/4 \(100%\)\s+4 delivered\s+[\d.]+/s\s+done", out.getvalue())


def test_progress_off_a_terminal_with_json_logs_is_json_records(sqlite_engine, sandbox, monkeypatch) -> None:
    """With IMPACTIN_LOG_FORMAT=json every stderr line is a JSON record, progress included."""
    monkeypatch.setenv("IMPACTIN_LOG_FORMAT", "json")
    add_integration(sqlite_engine, "acme", "benevity")
    add_events(sqlite_engine, events("acme", 3))
    extract(sqlite_engine, "acme", Provider.BENEVITY)
    started = datetime.now(UTC)
    out = io.StringIO()

    def sample() -> dict[str, ProviderProgress]:
        return delivery_progress(sqlite_engine, started, datetime.now(UTC), company_ids=["acme"])

    factory = factory_for(sqlite_engine, sandbox)
    try:
        with Progress(sample, stream=out, interval=0.05, plain_every=0, terminal=False):
            deliver(sqlite_engine, factory, "benevity")
    finally:
        factory.close()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert records and all(r["logger"] == "impactin.progress" and r["level"] == "INFO" for r in records)
    assert re.search(r"benevity\s+3/3 \(100%\)", records[-1]["message"]), records[-1]


def test_replay_all_failed_progress_counts_the_failed_rows_of_the_start(engine, sandbox) -> None:
    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", 3))
    extract(engine, "acme", Provider.BENEVITY)
    sandbox.providers["benevity"].configure({"reject_events": ["evt_acme_00000", "evt_acme_00001"]})
    factory = factory_for(engine, sandbox)
    try:
        deliver(engine, factory, "benevity")
        assert statuses(engine) == {"success": 1, "failed": 2}
        sandbox.providers["benevity"].configure({"reject_events": []})
        started = datetime.now(UTC)
        failed = failed_counts(engine, company_id="acme", provider=None)
        assert failed == {"benevity": 2}
        out = io.StringIO()

        def sample() -> dict[str, ProviderProgress]:
            return replay_progress(engine, started, failed, company_id="acme", provider=None)

        with Progress(sample, stream=out, interval=0.05, plain_every=0, terminal=False):
            results = replay_all_failed(engine, factory, company_id="acme")
    finally:
        factory.close()
    assert [r.success for r in results] == [True, True]
    assert re.search(r"progress: benevity\s+2/2 \(100%\)\s+2 delivered\s+[\d.]+/s\s+done", out.getvalue())


def test_the_demos_hints_run_as_printed_from_the_repository_root(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    impactin = command_path()
    assert impactin == str(Path(sys.executable).parent.relative_to(ROOT) / "impactin")  # .venv/bin/impactin
    bare = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PATH")} | {"PATH": "/usr/bin:/bin"}
    for hint in ([impactin, "deliveries", "list", "--help"], [impactin, "ui", "--help"]):
        done = subprocess.run(hint, cwd=ROOT, env=bare, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr

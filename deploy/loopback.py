"""The production deployment on this machine: PostgreSQL storage, a gRPC code server, the webserver and the daemon
as separate processes on loopback ports, runs launched through the code server. `make prod-up` / `make prod-down`.

    python deploy/loopback.py up [--dir .impactin/prod] [--webserver-port 3000] [--code-server-port 4266]
    python deploy/loopback.py down [--dir .impactin/prod]

`up` uses, from the environment or these defaults on the local PostgreSQL server (databases created if missing):
DAGSTER_POSTGRES_URL (postgresql+psycopg2://postgres@127.0.0.1:5432/impactin_dagster), IMPACTIN_WAREHOUSE_URL
(postgresql+psycopg://postgres@127.0.0.1:5432/impactin_warehouse; migrated), IMPACTIN_ENCRYPTION_KEY (a key kept
in the folder) and IMPACTIN_RUNS_PER_PROVIDER (3). When no provider is configured (no *_API_URL), it also starts
the sandbox providers and points the code location at them. Each process is the leader of its own process group,
so `down` stops it with everything it started (runs included). Logs: <dir>/logs/.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from impactin_pipelines.defs.event_log import use_batched_dagster_events

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOCATION = "impactin"
DEFAULT_DAGSTER_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/impactin_dagster"
DEFAULT_WAREHOUSE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/impactin_warehouse"
PROVIDER_URLS = ("BENEVITY_API_URL", "GOODERA_API_URL", "WORKDAY_API_URL")
STOP_ORDER = ("daemon", "webserver", "code-server", "sandbox")  # stop launching first, providers last
DAEMONS = {"SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR"}
READY_QUERY = """{
  workspaceOrError { ... on Workspace { locationEntries { name
    locationOrLoadError { __typename ... on PythonError { message } } } } }
  instance { daemonHealth { allDaemonStatuses { daemonType healthy } } }
}"""


class StartupError(RuntimeError):
    pass


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _ensure_database(url: str) -> None:
    """CREATE DATABASE for a PostgreSQL URL on a loopback server when it does not exist yet."""
    import sqlalchemy as sa
    from sqlalchemy.engine.url import make_url

    target = make_url(url)
    if not target.drivername.startswith("postgresql") or target.host not in ("127.0.0.1", "localhost", "::1"):
        return
    maintenance = target.set(drivername="postgresql+psycopg", database="postgres")
    admin = sa.create_engine(maintenance, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(sa.text("select 1 from pg_database where datname = :n"), {"n": target.database})
            if exists.first() is None:
                conn.exec_driver_sql(f'CREATE DATABASE "{target.database}"')
    finally:
        admin.dispose()


def _encryption_key(folder: Path) -> str:
    from cryptography.fernet import Fernet

    path = folder / "encryption.key"
    if not path.exists():
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as key_file:
            key_file.write(Fernet.generate_key().decode())
    return path.read_text().strip()


def _pid_file(folder: Path, name: str) -> Path:
    return folder / "pids" / f"{name}.pid"


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stoppable() -> None:
    """In the child, before exec: SIGTERM and SIGINT at their defaults. An ignored signal stays ignored across exec,
    so a child of a parent that ignores SIGTERM (a container's PID 1, a background job) could not be stopped by
    `down`, only killed."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(folder: Path, name: str, args: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    (folder / "pids").mkdir(parents=True, exist_ok=True)
    with open(folder / "logs" / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 (our own command lines)
            args, cwd=ROOT, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_stoppable,
        )  # fmt: skip
    _pid_file(folder, name).write_text(str(proc.pid))
    return proc


def _tail(folder: Path, name: str, lines: int = 30) -> str:
    path = folder / "logs" / f"{name}.log"
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (http://127.0.0.1 only)
        return json.loads(response.read())["data"]


def _check_alive(folder: Path, procs: Mapping[str, subprocess.Popen[bytes]]) -> None:
    for name, proc in procs.items():
        if proc.poll() is not None:
            raise StartupError(f"{name} exited with {proc.returncode}:\n{_tail(folder, name)}")


def _wait_code_server(folder: Path, procs: Mapping[str, subprocess.Popen[bytes]], port: int, deadline: float) -> None:
    """Until the code server answers gRPC health checks: it has loaded the code location."""
    check = [str(BIN / "dagster"), "api", "grpc-health-check", "-h", "127.0.0.1", "-p", str(port)]
    while time.monotonic() < deadline:
        _check_alive(folder, procs)
        probe = subprocess.run(check, cwd=ROOT, capture_output=True, timeout=60, check=False)  # noqa: S603
        if probe.returncode == 0:
            return
        time.sleep(1.0)
    raise StartupError(f"the code server did not answer in time:\n{_tail(folder, 'code-server')}")


def _wait_ready(folder: Path, procs: Mapping[str, subprocess.Popen[bytes]], port: int, deadline: float) -> None:
    """Until the webserver answers, shows the code location loaded and the daemons heartbeat."""
    last = "webserver not answering yet"
    while time.monotonic() < deadline:
        _check_alive(folder, procs)
        try:
            data = _graphql(port, READY_QUERY)
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            last = f"webserver: {exc}"
        else:
            entries = {e["name"]: e["locationOrLoadError"] for e in data["workspaceOrError"]["locationEntries"]}
            location = entries.get(LOCATION) or {"__typename": "missing"}
            healthy = {d["daemonType"] for d in data["instance"]["daemonHealth"]["allDaemonStatuses"] if d["healthy"]}
            if location["__typename"] == "RepositoryLocation" and healthy >= DAEMONS:
                return
            state = location.get("message") or location["__typename"]
            last = f"code location: {state}; healthy daemons: {sorted(healthy)}"
        time.sleep(1.0)
    raise StartupError(f"not ready in time ({last})")


def up(folder: Path, webserver_port: int, code_server_port: int, sandbox_port: int, timeout_s: float) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    running = [p.stem for p in (folder / "pids").glob("*.pid") if _alive(int(p.read_text()))]
    if running:
        print(f"already running: {', '.join(running)} (make prod-down first)", file=sys.stderr)
        return 1
    ports = [webserver_port, code_server_port]
    env = dict(os.environ)
    start_sandbox = not any(env.get(name) for name in PROVIDER_URLS)
    if start_sandbox:
        ports.append(sandbox_port)
    busy = [p for p in ports if not _free(p)]
    if busy:
        print(f"ports in use on 127.0.0.1: {busy}", file=sys.stderr)
        return 1

    home = folder / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    workspace = folder / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        f"  - grpc_server:\n      host: 127.0.0.1\n      port: {code_server_port}\n      location_name: {LOCATION}\n"
    )
    env.setdefault("DAGSTER_POSTGRES_URL", DEFAULT_DAGSTER_URL)
    env.setdefault("IMPACTIN_WAREHOUSE_URL", DEFAULT_WAREHOUSE_URL)
    env.setdefault("IMPACTIN_RUNS_PER_PROVIDER", "3")
    env.setdefault("IMPACTIN_STATE_DIR", str(folder / "state"))
    use_batched_dagster_events(env)  # the webserver and the daemon create runs: they write the planned events
    if not env.get("IMPACTIN_ENCRYPTION_KEY"):
        env["IMPACTIN_ENCRYPTION_KEY"] = _encryption_key(folder)
    env["DAGSTER_HOME"] = str(home)
    for name in ("DAGSTER_POSTGRES_URL", "IMPACTIN_WAREHOUSE_URL"):
        try:
            _ensure_database(env[name])
        except Exception as exc:  # the message may carry the URL's password: name the variable, not the value
            reason = type(exc).__name__
            print(f"prod-up failed: cannot reach or create the database of {name}: {reason}", file=sys.stderr)
            return 1
    migrate = [str(BIN / "impactin"), "db", "upgrade"]
    migrated = subprocess.run(migrate, cwd=ROOT, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if migrated.returncode != 0:
        print(f"prod-up failed: impactin db upgrade:\n{migrated.stderr[-2000:]}", file=sys.stderr)
        return 1

    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        if start_sandbox:
            from impactin_pipelines.sandbox.server import SandboxServer

            sandbox = [str(BIN / "impactin"), "sandbox", "--port", str(sandbox_port)]
            procs["sandbox"] = _start(folder, "sandbox", sandbox, env)
            env.update(SandboxServer.env_for(f"http://127.0.0.1:{sandbox_port}"))
        code_server = [
            str(BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1", "-p", str(code_server_port),
            "-m", "impactin_pipelines.definitions", "--location-name", LOCATION, "--use-python-environment-entry-point",
        ]  # fmt: skip
        procs["code-server"] = _start(folder, "code-server", code_server, env)
        deadline = time.monotonic() + timeout_s
        _wait_code_server(folder, procs, code_server_port, deadline)
        webserver = [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(webserver_port), "-w", str(workspace)]
        procs["webserver"] = _start(folder, "webserver", webserver, env)
        procs["daemon"] = _start(folder, "daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], env)
        _wait_ready(folder, procs, webserver_port, deadline)
    except (StartupError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"prod-up failed: {exc}", file=sys.stderr)
        down(folder)
        return 1
    print(f"Dagster UI: http://127.0.0.1:{webserver_port}  (code server 127.0.0.1:{code_server_port})")
    if start_sandbox:
        print(f"sandbox providers: http://127.0.0.1:{sandbox_port}")
    print(f"logs: {folder / 'logs'}; stop with `make prod-down`")
    return 0


def _gone_within(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _alive(pgid)


def down(folder: Path, grace_s: float = 20.0, kill_wait_s: float = 10.0) -> int:
    """SIGTERM each process group we started, SIGKILL what is still there after the grace period, and return once
    each group is gone (1 if one outlived SIGKILL's wait, naming it)."""
    files = {p.stem: p for p in (folder / "pids").glob("*.pid")} if (folder / "pids").exists() else {}
    order = [n for n in STOP_ORDER if n in files] + sorted(set(files) - set(STOP_ORDER))
    left = []
    for name in order:
        pgid = int(files[name].read_text())
        if _alive(pgid):
            os.killpg(pgid, signal.SIGTERM)
            if not _gone_within(pgid, grace_s):
                print(f"{name} did not stop within {grace_s:g} s of SIGTERM: killing it", file=sys.stderr)
                os.killpg(pgid, signal.SIGKILL)
                if not _gone_within(pgid, kill_wait_s):  # SIGKILL is asynchronous: wait for the group to go
                    left.append(name)
                    continue  # keep its pid file: a second `down` can still find it
            print(f"stopped {name}")
        files[name].unlink()
    if left:
        print(f"still running after SIGKILL: {', '.join(left)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=ROOT / ".impactin" / "prod")
    parser.add_argument("--webserver-port", type=int, default=3000)
    parser.add_argument("--code-server-port", type=int, default=4266)
    parser.add_argument("--sandbox-port", type=int, default=8765)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for everything to be ready")
    args = parser.parse_args(argv)
    folder = args.dir.resolve()
    if args.command == "up":
        return up(folder, args.webserver_port, args.code_server_port, args.sandbox_port, args.timeout)
    return down(folder)


if __name__ == "__main__":
    sys.exit(main())

"""Run the real `impactin` command in a subprocess, as an operator would."""

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

IMPACTIN = [sys.executable, "-m", "impactin_pipelines.cli"]


def cli_env(tmp_path: Path, warehouse_url: str, sandbox: Any = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENEVITY_", "GOODERA_", "WORKDAY_"))}
    env.update(
        IMPACTIN_WAREHOUSE_URL=warehouse_url,
        IMPACTIN_STATE_DIR=str(tmp_path / "state"),
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        IMPACTIN_ENCRYPTION_KEY=os.environ.get("IMPACTIN_ENCRYPTION_KEY")
        or "n3SsmO2cM9e1Xg7Hcm0qgW9yGx5dB3wWcwJ2Y2pS6gY=",
        IMPACTIN_RETRY_INITIAL_DELAY_S="0.01",
        IMPACTIN_RETRY_MAX_DELAY_S="0.05",
        PYTHONUNBUFFERED="1",
    )
    if sandbox is not None:
        env.update(sandbox.env())
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], *, timeout: float = 120, cwd: Path | None = None):
    return subprocess.run(
        [*IMPACTIN, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )


def start_cli(
    args: list[str], env: dict[str, str], cwd: Path | None = None, *, wrapper: Sequence[str] = ()
) -> subprocess.Popen[str]:
    """`wrapper` runs the command through another one (e.g. `unshare` for a PID namespace of its own)."""
    return subprocess.Popen(
        [*wrapper, *IMPACTIN, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd
    )

"""The package as a user installs it: a wheel in a fresh virtual environment outside the repository.

Proves the wheel carries what the commands read at run time (SQL migrations, the WSDL, the embedded Dagster
instance config) instead of finding them through a source checkout.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, (
        f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def test_wheel_installs_and_runs_db_upgrade_and_demo_outside_the_repository(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
        tmp_path,
        env,
    )
    (wheel,) = dist.glob("impactin_pipelines-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile", str(wheel)],
        tmp_path,
        env,
    )

    work = tmp_path / "elsewhere"
    work.mkdir()
    env.update(IMPACTIN_STATE_DIR=str(work / "state"), VIRTUAL_ENV=str(venv))
    env.pop("DAGSTER_HOME", None)
    located = _run([str(python), "-c", "import impactin_pipelines; print(impactin_pipelines.__file__)"], work, env)
    assert Path(located.stdout.strip()).is_relative_to(venv), located.stdout

    impactin = str(venv / "bin" / "impactin")
    upgrade = _run([impactin, "db", "upgrade"], work, env)
    assert "applied 0001_initial" in upgrade.stdout and "schema at version" in upgrade.stdout

    demo = _run([impactin, "demo", "--events-per-company", "3"], work, env)
    total = next(line for line in demo.stdout.splitlines() if line.startswith("total"))
    delivered = [int(cell) for cell in total.split()[1:]]
    assert delivered[1] > 0 and delivered[1] == delivered[2], demo.stdout  # staged == delivered, none pending
    assert (work / "state" / "dagster_home" / "dagster.yaml").read_text() == (REPO / "dagster.yaml").read_text()

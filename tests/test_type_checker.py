"""The type checker is part of `make lint` and `make test` (what CI runs), with the project's strict settings."""

import subprocess
import textwrap
import tomllib
from pathlib import Path

from mypy import api as mypy_api

ROOT = Path(__file__).resolve().parent.parent


def _dry_run(target: str) -> list[str]:
    out = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def test_lint_and_test_run_mypy_and_test_runs_it_before_pytest() -> None:
    lint, test = _dry_run("lint"), _dry_run("test")
    assert any(line.endswith("/mypy") for line in lint), lint
    mypy_at = next(i for i, line in enumerate(test) if line.endswith("/mypy"))
    pytest_at = next(i for i, line in enumerate(test) if "/pytest" in line)
    assert mypy_at < pytest_at, test


def test_config_checks_the_package_and_refuses_untyped_defs_and_stale_ignores(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        textwrap.dedent(
            """
            def untyped(x):
                return x

            def typed(x: int) -> int:
                return x  # type: ignore[return-value]
            """
        )
    )
    stdout, _, status = mypy_api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "--no-incremental", "--cache-dir=/dev/null", str(sample)]
    )
    assert status == 1, stdout
    assert "sample.py:2: error: Function is missing a type annotation  [no-untyped-def]" in stdout
    assert 'sample.py:6: error: Unused "type: ignore" comment  [unused-ignore]' in stdout


def test_config_targets_the_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert "impactin_pipelines" in config["files"]
    assert config["python_version"] == "3.11"

"""Where Dagster may be imported: under `defs/`, in `definitions.py` and by the CLI's run command; and `defs/`
holds definitions, its helpers in `defs/orchestration/`."""

import ast
import subprocess
import sys
from pathlib import Path

import impactin_pipelines

PACKAGE = Path(impactin_pipelines.__file__).parent
ALLOWED = ("defs/", "definitions.py", "cli/run.py")


def _imports_dagster(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "dagster" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "dagster" and not node.level:
            return True
    return False


def test_dagster_is_imported_only_under_defs_definitions_and_the_run_command() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 50
    offenders = [str(p.relative_to(PACKAGE)) for p in modules if not str(p.relative_to(PACKAGE)).startswith(ALLOWED)]
    offenders = [m for m in offenders if _imports_dagster(PACKAGE / m)]
    assert offenders == []


def test_defs_holds_definitions_and_its_helpers_live_in_orchestration() -> None:
    top_level = {p.stem for p in (PACKAGE / "defs").glob("*.py")}
    assert not top_level & {"planning", "runner", "partitions", "loggers"}
    helpers = {p.stem for p in (PACKAGE / "defs" / "orchestration").glob("*.py")}
    assert {"planning", "runner", "partitions"} <= helpers


def test_loading_the_code_location_does_not_import_pandas() -> None:
    """Every run process, code server and CLI command loads the definitions; pandas (a third of that load) is
    imported only when statistics are computed."""
    probe = "import sys, impactin_pipelines.definitions; print(sorted(m for m in sys.modules if m == 'pandas'))"
    loaded = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    assert loaded.strip() == "[]"

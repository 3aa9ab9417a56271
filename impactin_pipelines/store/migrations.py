"""Applies the versioned SQL files in `sql/` in order, each once, each in one transaction.

`sql/` lives at the top of the repository; `impactin_pipelines/sql` links to it, so the files are found the same
way from a checkout and from an installed wheel (which carries them as package data)."""

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.schema import UTCDateTime

SQL_DIR = Path(__file__).parent.parent / "sql"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_ONLY = re.compile(r"^--\s*(postgresql|sqlite):\s*$")

schema_migrations = sa.Table(
    "impactin_schema_migrations",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def statements(self, dialect: str | None = None) -> list[str]:
        """Split on `;` at end of line (a procedural body keeps its `;` inside the line). A statement right after
        a `-- postgresql:` or `-- sqlite:` line is for that backend only: left out for another `dialect`."""
        found: list[str] = []
        lines: list[str] = []
        only: str | None = None
        for line in self.path.read_text().splitlines():
            marker = _ONLY.match(line.strip())
            if marker:
                only = marker.group(1)
            elif not line.strip().startswith("--"):
                lines.append(line)
                if re.search(r";\s*$", line):
                    statement = re.sub(r";\s*$", "", "\n".join(lines)).strip()
                    if statement and (dialect is None or only in (None, dialect)):
                        found.append(statement)
                    lines, only = [], None
        rest = "\n".join(lines).strip()
        if rest and (dialect is None or only in (None, dialect)):
            found.append(rest)
        return found


def available(sql_dir: Path = SQL_DIR) -> list[Migration]:
    found = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise ValueError(f"migration file name {path.name!r} is not NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {sql_dir}: {versions}")
    return found


def applied_versions(engine: Engine) -> set[int]:
    """The migration versions recorded in the warehouse (none before the first upgrade); read-only."""
    with read_connection(engine) as conn:
        if not sa.inspect(conn).has_table(schema_migrations.name):
            return set()
        return set(conn.execute(sa.select(schema_migrations.c.version)).scalars())


def current_version(engine: Engine, sql_dir: Path = SQL_DIR) -> int:
    """The version the warehouse is complete up to (0 before any migration): the newest migration such that it and
    every one before it are applied. A gap (say 0008 applied but not 0007, from a branch deployed before its
    sibling) reads as the version before the gap, so the schema check asks for an upgrade instead of passing.
    Versions newer than this code knows are reported as they are. A read-only look, no write lock on SQLite."""
    applied = applied_versions(engine)
    complete = 0
    for migration in available(sql_dir):
        if migration.version not in applied:
            return complete
        complete = migration.version
    return max(applied, default=complete)


def latest_version(sql_dir: Path = SQL_DIR) -> int:
    """The version this code needs: its newest migration."""
    return max((m.version for m in available(sql_dir)), default=0)


def upgrade(engine: Engine, sql_dir: Path = SQL_DIR) -> list[Migration]:
    """Apply what is missing; return what was applied. Safe to run any number of times, even concurrently:
    the version row is inserted in the same transaction as the DDL, so a racing upgrade fails and rolls back."""
    schema_migrations.create(engine, checkfirst=True)
    applied: list[Migration] = []
    for migration in available(sql_dir):
        with engine.begin() as conn:
            done = conn.execute(
                sa.select(schema_migrations.c.version).where(schema_migrations.c.version == migration.version)
            ).first()
            if done:
                continue
            for statement in migration.statements(conn.dialect.name):
                conn.exec_driver_sql(statement)
            conn.execute(
                schema_migrations.insert().values(
                    version=migration.version, name=migration.name, applied_at=datetime.now(UTC)
                )
            )
        applied.append(migration)
    return applied

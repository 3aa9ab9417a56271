"""Migration files may mark a statement for one backend (`-- postgresql:` / `-- sqlite:` on the line before it)."""

from pathlib import Path

from impactin_pipelines.store.migrations import Migration, available


def test_marked_statements_run_on_their_backend_only(tmp_path: Path) -> None:
    path = tmp_path / "0001_mixed.sql"
    path.write_text(
        "-- a comment\n"
        "CREATE TABLE t (a TEXT);\n"
        "-- postgresql:\n"
        "DO $$ BEGIN PERFORM 1; END $$;\n"
        "-- sqlite:\n"
        "CREATE INDEX ix ON t (a)\n"
        "    WHERE a IS NOT NULL;\n"
        "CREATE INDEX ix2 ON t (a)"
    )
    migration = Migration(1, "mixed", path)
    both, pg_only, sqlite_only = (
        "CREATE TABLE t (a TEXT)",
        "DO $$ BEGIN PERFORM 1; END $$",
        "CREATE INDEX ix ON t (a)\n    WHERE a IS NOT NULL",
    )
    last = "CREATE INDEX ix2 ON t (a)"
    assert migration.statements("postgresql") == [both, pg_only, last]
    assert migration.statements("sqlite") == [both, sqlite_only, last]
    assert migration.statements() == [both, pg_only, sqlite_only, last]


def test_0009_keeps_its_postgresql_statements_off_sqlite() -> None:
    [filters] = [m for m in available() if m.version == 9]
    sqlite = filters.statements("sqlite")
    assert not any("jsonb" in s or "pg_trgm" in s or "DO $$" in s for s in sqlite)
    assert len(filters.statements("postgresql")) == len(sqlite) + 3

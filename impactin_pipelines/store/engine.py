"""Engines for the warehouse: PostgreSQL in production, SQLite embedded.

SQLite gets WAL (readers never block the writer), a generous busy timeout, and `BEGIN IMMEDIATE` for every
transaction: a deferred transaction that later writes can fail at once with "database is locked" instead of
waiting, which is exactly the concurrency we have (threads of one run, several runs at once).
"""

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import make_url

SQLITE_BUSY_TIMEOUT_MS = 60_000
# Connections opened beyond the pool's size when it is busy (closed when returned). A delivery run's send threads
# each keep one for the run (store/held_connections), so one process may use concurrency x providers at once.
PG_MAX_OVERFLOW = 64
# Execution option: False keeps a statement from being prepared on the server (see `_postgres_engine`).
SERVER_PREPARED = "impactin_server_prepared"


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if parsed.drivername == "postgresql":  # prefer psycopg 3, which we ship; psycopg2 is only Dagster's
        parsed = parsed.set(drivername="postgresql+psycopg")
    return _postgres_engine(
        sa.create_engine(
            parsed, pool_size=pool_size, max_overflow=max(pool_size, PG_MAX_OVERFLOW), pool_pre_ping=True, future=True
        )
    )


def _postgres_engine(engine: Engine) -> Engine:
    """psycopg prepares a statement on the server once a connection has run it five times, and PostgreSQL may
    then plan it once for any values (a generic plan). A statement whose best plan depends on its values (a claim:
    the companies in its array decide which index is read in claim order) carries the execution option
    `SERVER_PREPARED: False`, and is planned for its values at each execution. (psycopg2, which a URL may name,
    never prepares on the server: nothing to do there.)"""
    if engine.dialect.driver != "psycopg":
        return engine

    @event.listens_for(engine, "do_execute")
    def _unprepared(cursor: Any, statement: str, parameters: Any, context: Any) -> bool | None:
        if context.execution_options.get(SERVER_PREPARED, True):
            return None  # the dialect executes it as usual
        cursor.execute(statement, parameters, prepare=False)
        return True

    return engine


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        pool_size=20,
        max_overflow=20,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        # Undecodable bytes written by another system must fail one event, not the whole query.
        dbapi_connection.text_factory = _decode_lenient
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        readonly = conn.get_execution_options().get("readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


def _decode_lenient(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for queries only: on SQLite it does not take the write lock."""
    with engine.connect() as conn:
        conn = conn.execution_options(readonly=True)
        with conn.begin():
            yield conn

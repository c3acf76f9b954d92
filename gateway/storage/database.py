"""Engines for the gateway's own database (access log, consents): SQLite in the data dir by default,
PostgreSQL in production, both through SQLAlchemy's async Core and migrated by Alembic at start.

SQLite runs in WAL mode with `synchronous=FULL`, so a commit is on disk when it returns; writers take
the database lock when they begin (`BEGIN IMMEDIATE`) instead of upgrading a read lock mid-transaction,
which is what lets several processes share one file without spurious "database is locked" failures.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).parent / "migrations"
WRITER = {"jamu_writer": True}  # execution options of a writing transaction


class DatabaseConfigError(ValueError):
    """The database URL names an engine the gateway does not support."""


def database_url(url: str | None, data_dir: Path) -> str:
    """The async driver URL for a configured URL (or the embedded SQLite file when none is set)."""
    if not url:
        return f"sqlite+aiosqlite:///{(data_dir / 'jamu.db').resolve()}"
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise DatabaseConfigError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


def row_dict(row: Any) -> dict[str, Any]:
    """A result row as a plain dict (column names come back as str subclasses orjson refuses)."""
    return {str(name): value for name, value in row._mapping.items()}


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str, *, schema: str | None = None, statement_timeout_s: float = 5.0) -> AsyncEngine:
    """An engine with the durability and locking settings above; `schema` scopes PostgreSQL tables."""
    backend = make_url(url).get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args["command_timeout"] = statement_timeout_s
        if schema:
            connect_args["server_settings"] = {"search_path": schema}
        return create_async_engine(url, connect_args=connect_args, pool_size=5, max_overflow=5, pool_pre_ping=True)
    if url.startswith("sqlite+aiosqlite:///") and not url.endswith(":memory:"):
        Path(url.removeprefix("sqlite+aiosqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url, connect_args={"timeout": statement_timeout_s}, execution_options={"jamu_timeout_s": statement_timeout_s}
    )
    _sqlite_discipline(engine.sync_engine, statement_timeout_s)
    return engine


def sqlite_file(engine: AsyncEngine) -> tuple[str, float]:
    """The engine's SQLite file and its busy timeout."""
    return engine.url.database or "", engine.get_execution_options().get("jamu_timeout_s", 5.0)


def open_sqlite(path: str, timeout_s: float) -> sqlite3.Connection:
    """A plain sqlite3 connection with the engines' discipline, for the access-log writer process (the
    engine's per-statement work was most of a commit's CPU). The caller issues BEGIN IMMEDIATE/COMMIT."""
    connection = sqlite3.connect(path, timeout=timeout_s, isolation_level=None)
    _pragmas(connection, timeout_s)
    return connection


def _pragmas(dbapi_connection: Any, statement_timeout_s: float) -> None:
    dbapi_connection.isolation_level = None  # BEGIN is issued explicitly
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={int(statement_timeout_s * 1000)}")
    cursor.close()


def _sqlite_discipline(engine: Engine, statement_timeout_s: float) -> None:
    """WAL, synchronous=FULL, a bounded busy wait, and BEGIN IMMEDIATE for writers."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        _pragmas(dbapi_connection, statement_timeout_s)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get("jamu_writer")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _upgrade(connection: Connection, schema: str | None) -> None:
    if connection.dialect.name == "postgresql":
        # Replicas starting together migrate one at a time.
        connection.execute(text("SELECT pg_advisory_xact_lock(7402166)"))
        if schema:
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine, schema: str | None = None) -> None:
    """Bring the schema to the latest revision (idempotent; safe with several processes starting)."""
    async with engine.execution_options(**WRITER).begin() as connection:
        await connection.run_sync(_upgrade, schema)

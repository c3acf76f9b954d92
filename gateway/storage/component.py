"""The database every replica shares (SQLite in the data dir by default), migrated before anything
else starts and disposed of after everything else has closed."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.lifecycle import Component, ConfigurationError
from gateway.settings import Settings
from gateway.storage.database import DatabaseConfigError, create_engine, database_url, migrate


@dataclass
class Database:
    engine: AsyncEngine
    component: Component


def build_database(settings: Settings) -> Database:
    try:
        engine = create_engine(
            database_url(settings.database_url, settings.data_dir),
            schema=settings.database_schema,
            statement_timeout_s=settings.database_timeout_s,
        )
    except DatabaseConfigError as exc:
        raise ConfigurationError(f"GATEWAY_DATABASE_URL: {exc}") from None

    async def start() -> None:
        await migrate(engine, settings.database_schema)

    return Database(engine, Component("database", start, engine.dispose))

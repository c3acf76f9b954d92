"""The shared storage layer: SQLAlchemy Core (async) over SQLite or PostgreSQL, migrated by Alembic."""

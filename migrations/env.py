"""Alembic environment: one schema for PostgreSQL and SQLite (batch mode for SQLite's ALTERs)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool, text

from app.store.models import Base

config = context.config
target_metadata = Base.metadata

# Two processes starting together (api + worker) must not both create the tables.
MIGRATION_LOCK_KEY = 0x6B65646974  # "kedit"


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from app.config import ServiceConfig

    return ServiceConfig().resolved_database_url()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = engine_from_config({"sqlalchemy.url": _url()}, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Held until this transaction ends; the second process then sees the tables at head.
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

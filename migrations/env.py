"""Alembic environment for pgmaxsim's own schema (``maxsim``).

The version table lives in the ``maxsim`` schema so it never collides with an
application's own alembic history. ``pgmaxsim.db.migrate`` hands us a live
SQLAlchemy connection in ``config.attributes["connection"]``; running
``alembic`` directly uses ``sqlalchemy.url`` / ``DATABASE_URL`` instead.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, text

VERSION_SCHEMA = "maxsim"
config = context.config


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    connection.execute(text("CREATE SCHEMA IF NOT EXISTS maxsim"))
    context.configure(
        connection=connection,
        version_table_schema=VERSION_SCHEMA,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ["DATABASE_URL"]
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    with create_engine(url).connect() as conn:
        _run(conn)
        conn.commit()


if context.is_offline_mode():
    raise SystemExit("pgmaxsim migrations need a live connection (no offline SQL mode)")
run_migrations_online()

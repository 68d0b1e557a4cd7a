"""``pgmaxsim migrate``: alembic upgrade/downgrade of the ``maxsim`` schema.

Checks the server first so that the common failures (unreachable server, no
pgvector, no right to create extensions or schemas) end in one clear line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from pgmaxsim.db.connect import connect, resolve_dsn
from pgmaxsim.db.sqlfiles import apply_functions
from pgmaxsim.errors import ConfigurationError, PgmaxsimError, one_line

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "_migrations"


@dataclass
class MigrateReport:
    revision_before: str | None
    revision_after: str | None
    notes: list[str] = field(default_factory=list)


def _alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def current_revision(conn: psycopg.Connection[Any]) -> str | None:
    exists = conn.execute("SELECT to_regclass('maxsim.alembic_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute("SELECT version_num FROM maxsim.alembic_version").fetchone()
    return row[0] if row else None


def revisions() -> list[str]:
    """The schema's revisions, oldest first."""
    from alembic.script import ScriptDirectory

    return [r.revision for r in reversed(list(ScriptDirectory.from_config(_alembic_config()).walk_revisions()))]


def _alembic_errors() -> tuple[type[BaseException], ...]:
    from alembic.util.exc import CommandError

    return (CommandError,)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def _precheck(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector'),"
        " EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector'),"
        " current_database()"
    ).fetchone()
    assert row is not None
    installed, available, db = row
    if not installed and not available:
        raise ConfigurationError(
            f"pgvector is not installed on the server of database {db!r}: install pgvector >= 0.7 there"
        )


def _drop_every_index(conn: psycopg.Connection[Any]) -> None:
    """Drop every index with ``maxsim.drop_index`` (a re-embedding's shadow goes with its index)."""
    with conn.cursor() as cur:
        if cur.execute("SELECT pg_catalog.to_regprocedure('maxsim.drop_index(text)') IS NOT NULL").fetchone()[0]:
            while True:
                row = cur.execute("SELECT name FROM maxsim.indexes ORDER BY id DESC LIMIT 1").fetchone()
                if row is None:
                    return
                cur.execute("SELECT maxsim.drop_index(%s)", (row[0],))


def _explain(e: psycopg.Error, db: str) -> PgmaxsimError:
    msg = one_line(e)
    if isinstance(e, psycopg.errors.InsufficientPrivilege):
        if "extension" in msg:
            return ConfigurationError(
                f"{msg}: connect as a superuser, or have a DBA run CREATE EXTENSION vector in database {db!r}"
            )
        return ConfigurationError(f"{msg}: the migrating role needs CREATE on database {db!r}")
    return PgmaxsimError(f"migration failed: {msg}")


def _run(dsn: str, action: str, revision: str) -> MigrateReport:
    from alembic import command
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    with connect(dsn) as probe:
        _precheck(probe)
        before = current_revision(probe)
        db = probe.info.dbname
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), poolclass=NullPool
    )
    notes: list[str] = []
    try:
        with engine.connect() as sa_conn:
            sa_conn.connection.driver_connection.add_notice_handler(
                lambda d: notes.append(d.message_primary or "")
            )
            cfg = _alembic_config()
            cfg.attributes["connection"] = sa_conn
            if action == "upgrade":
                command.upgrade(cfg, revision)
                driver = sa_conn.connection.driver_connection
                if current_revision(driver) == head_revision():
                    # Functions are not revisions' business: (re)installed from the idempotent
                    # files at the newest revision, in the same transaction.
                    apply_functions(driver)
            else:
                if revision == "base":
                    # Every index first, through the one drop path: it knows every per-index object
                    # (token, centroid and first-stage tables, source triggers), which the frozen
                    # revisions' downgrades, written before some of them existed, do not.
                    _drop_every_index(sa_conn.connection.driver_connection)
                command.downgrade(cfg, revision)
                if revision == "base":
                    # Alembic leaves its (empty) version table: remove it and our schema.
                    from sqlalchemy import text

                    sa_conn.execute(text("DROP TABLE IF EXISTS maxsim.alembic_version"))
                    sa_conn.execute(text("DROP SCHEMA IF EXISTS maxsim"))
            sa_conn.commit()
    except psycopg.Error as e:
        raise _explain(e, db) from e
    except _alembic_errors() as e:  # an unknown or unreachable revision: name the known ones
        raise PgmaxsimError(f"{one_line(e)} (revisions: {', '.join(revisions())}, head; base removes"
                            " the schema)") from e
    except Exception as e:  # SQLAlchemy wraps driver errors
        orig = getattr(e, "orig", None)
        if isinstance(orig, psycopg.Error):
            raise _explain(orig, db) from e
        raise
    finally:
        engine.dispose()
    with connect(dsn) as probe:
        after = current_revision(probe)
        if after is not None:
            row = probe.execute("SELECT maxsim.has_plpython()").fetchone()
            if row and not row[0]:
                notes.append(
                    "plpython3u is not available on this server: the SQL functions use their pure-SQL"
                    " implementation (exact, slower); see README 'Servers without plpython3u'"
                )
    notes = [n for n in notes if n.startswith(("pgmaxsim", "plpython3u"))]
    return MigrateReport(before, after, notes)


def upgrade(dsn: str | None = None, revision: str = "head") -> MigrateReport:
    """Bring the ``maxsim`` schema up to ``revision`` (default: the newest)."""
    return _run(resolve_dsn(dsn), "upgrade", revision)


def downgrade(dsn: str | None = None, revision: str = "base") -> MigrateReport:
    """Take the schema down to ``revision``; ``base`` removes everything pgmaxsim created."""
    return _run(resolve_dsn(dsn), "downgrade", revision)

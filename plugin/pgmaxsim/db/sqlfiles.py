"""Run the frozen SQL files of ``sql/`` from alembic revisions.

A revision names each file it runs together with the sha256 the file had when
the revision was released. If the file has changed since, the revision refuses
to run instead of silently installing today's SQL (the classic bug of
re-reading a live file from an old revision). To change released SQL, add a
new numbered file and a new revision.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pgmaxsim.errors import PgmaxsimError

SQL_DIR = Path(__file__).resolve().parent.parent / "_sql"


def sql_path(name: str) -> Path:
    return SQL_DIR / name


def sha256_of(name: str) -> str:
    return hashlib.sha256(sql_path(name).read_bytes()).hexdigest()


def read_frozen(name: str, digest: str) -> str:
    """The text of ``sql/<name>``, checked against the digest pinned by its revision."""
    path = sql_path(name)
    if not path.is_file():
        raise PgmaxsimError(f"migration file sql/{name} is missing from this installation")
    actual = sha256_of(name)
    if actual != digest:
        raise PgmaxsimError(
            f"sql/{name} changed after its revision was released (sha256 {actual[:12]}…, pinned {digest[:12]}…):"
            " add a new numbered SQL file and revision instead of editing a released one"
        )
    return path.read_text(encoding="utf-8")


def driver_connection(bind: Any) -> Any:
    """The psycopg connection under a SQLAlchemy connection (alembic's ``op.get_bind()``)."""
    return bind.connection.driver_connection


VECTOR_PLACEHOLDER = "@vector@"


def vector_schema(conn: Any) -> str:
    """The quoted schema pgvector lives in (``public`` when it is not installed yet)."""
    row = conn.execute(
        "SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_extension e"
        " JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
    ).fetchone()
    return row[0] if row else "public"


def run_sql_file(name: str, digest: str, bind: Any | None = None) -> None:
    """Execute a frozen SQL file inside the current alembic transaction.

    SQL files name pgvector's objects as ``@vector@.halfvec`` so that every
    function can pin ``search_path`` to ``pg_catalog, pg_temp``; the placeholder
    is replaced by the schema pgvector lives in.
    """
    if bind is None:
        from alembic import op

        bind = op.get_bind()
    conn = driver_connection(bind)
    sql = read_frozen(name, digest)
    if VECTOR_PLACEHOLDER in sql:
        sql = sql.replace(VECTOR_PLACEHOLDER, vector_schema(conn))
    # Executed as one simple-protocol script: no parameters, so '%' needs no escaping.
    conn.execute(sql.encode())


def server_has_plpython(bind: Any | None = None) -> bool:
    """Whether plpython3u is installed in this database (feature detection, not configuration)."""
    if bind is None:
        from alembic import op

        bind = op.get_bind()
    row = driver_connection(bind).execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'plpython3u')"
    ).fetchone()
    return bool(row and row[0])

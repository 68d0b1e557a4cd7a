"""The two kinds of SQL file: frozen schema changes and idempotent functions.

Frozen (``sql/NNNN_*.sql``): a revision names each file it runs together with
the sha256 the file had when the revision was released. If the file has changed
since, the revision refuses to run instead of silently installing today's SQL
(the classic bug of re-reading a live file from an old revision). To change
released SQL, add a new numbered file and a new revision.

Idempotent (``sql/idempotent/NNN_concern[.plpython|.nopython].sql``): every
function of the ``maxsim`` schema, one file per concern, applied by
:func:`apply_functions` whenever ``pgmaxsim migrate`` leaves the schema at its
newest revision (as pgai does). Fixing a function is an edit of its file, never a
new revision. Files ending ``.plpython.sql`` / ``.nopython.sql`` are alternatives
chosen by feature detection (the server has plpython3u or not).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from pgmaxsim.errors import PgmaxsimError

SQL_DIR = Path(__file__).resolve().parent.parent / "_sql"
FUNCTIONS_DIR = SQL_DIR / "idempotent"


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


#: The quoted schema pgvector lives in, as column ``s`` (no row: not installed); read here and in the
#: backend (pgmaxsim.plpy.codes).
VECTOR_SCHEMA_SQL = ("SELECT pg_catalog.quote_ident(n.nspname) AS s FROM pg_catalog.pg_extension e"
                     " JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'")


def vector_schema(conn: Any) -> str:
    """The quoted schema pgvector lives in (``public`` when it is not installed yet)."""
    row = conn.execute(VECTOR_SCHEMA_SQL).fetchone()
    return row[0] if row else "public"


def split_statements(sql: str, keep_comments: bool = False) -> list[str]:
    """Top-level statements of a SQL script (quotes, dollar quotes and comments respected).

    Comment lines are dropped unless ``keep_comments`` (a function body keeps its own: they are
    part of its source, and a re-installed function must equal the one the file installed).

    >>> split_statements("SELECT 1; CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql; -- x;")
    ['SELECT 1', 'CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql']
    """
    out: list[str] = []
    start = i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2) + 1
        elif c in "'\"":
            end = sql.find(c, i + 1)
        elif c == "$" and (m := re.match(r"\$[A-Za-z_]*\$", sql[i:])):
            end = sql.find(m.group(0), i + len(m.group(0))) + len(m.group(0)) - 1
        else:
            end = i
            if c == ";":
                out.append(sql[start:i])
                start = i + 1
        if end < i:  # unterminated: the rest of the script
            break
        i = end + 1
    out.append(sql[start:])
    if keep_comments:
        return [x.strip() for x in out if _strip_comments(x)]
    return [s for s in (_strip_comments(x) for x in out) if s]


def _strip_comments(stmt: str) -> str:
    lines = [ln for ln in stmt.strip().splitlines() if not ln.lstrip().startswith("--")]
    return "\n".join(lines).strip()


def run_sql_file(name: str, digest: str, bind: Any | None = None, functions_only: bool = False) -> None:
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
    if functions_only:
        # Only the functions of a released file (a downgrade putting back the functions of an
        # older revision, whose tables are still there), replacing any that survived.
        stmts = [s for s in split_statements(sql, keep_comments=True)
                 if _strip_comments(s).upper().startswith("CREATE FUNCTION")]
        sql = ";\n".join(re.sub(r"(?i)\bCREATE FUNCTION\b", "CREATE OR REPLACE FUNCTION", s, count=1)
                          for s in stmts)
    # Executed as one simple-protocol script: no parameters, so '%' needs no escaping.
    conn.execute(sql.encode())


def function_files(plpython: bool) -> list[Path]:
    """The idempotent function files this server gets, in order."""
    skip = ".nopython.sql" if plpython else ".plpython.sql"
    return [p for p in sorted(FUNCTIONS_DIR.glob("*.sql")) if not p.name.endswith(skip)]


#: Functions of ``maxsim`` that no file defines: generated per index by create_index.
GENERATED_FUNCTION = re.compile(r"^src_[0-9]+$")


def drop_functions(conn: Any) -> None:
    """Drop every function of the file-defined layer that nothing depends on.

    Dropping first (instead of only CREATE OR REPLACE) makes an upgraded schema equal a
    fresh install: a function removed or re-typed in the files leaves no stale overload
    behind. Functions some other role created in the schema are left for the lock-down
    (sql/idempotent/090_privileges.sql) to refuse loudly. Functions that other objects depend on (the trigger functions, a user's
    view over maxsim.search) are kept and replaced in place by the files.
    """
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text, p.proname FROM pg_catalog.pg_proc p"
        " WHERE p.pronamespace = 'maxsim'::regnamespace"
        " AND p.proowner = (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'maxsim')"
        " AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d"
        "   WHERE d.refclassid = 'pg_catalog.pg_proc'::regclass AND d.refobjid = p.oid AND d.deptype = 'n')"
        " AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgfoid = p.oid)"
    ).fetchall()
    for signature, name in rows:
        if not GENERATED_FUNCTION.match(name):
            conn.execute(f"DROP FUNCTION {signature}".encode())


def apply_functions(conn: Any) -> None:
    """(Re)install every ``maxsim`` function from the idempotent files, in one transaction."""
    plpython = bool(conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'plpython3u')").fetchone()[0])
    schema = vector_schema(conn)
    drop_functions(conn)
    for path in function_files(plpython):
        sql = path.read_text(encoding="utf-8").replace(VECTOR_PLACEHOLDER, schema)
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

"""Query text from SQL: maxsim.encode_query(index, text) -> halfvec[] and the query cache.

Revision ID: 0004
Revises: 0003

``maxsim.encode_query`` reads the query cache, then asks the scorer service
through ``maxsim._encode_remote``, which comes in two implementations with one
signature (feature detection, not configuration): with plpython3u it talks to
the scorer (``pgmaxsim scorer``, which hosts each index's query encoder);
without it, it can only say how to encode the query instead. ``@vector@`` is
replaced by pgvector's schema.
"""

from pgmaxsim.db.sqlfiles import driver_connection, read_frozen, server_has_plpython

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UP = ("0004_encode_query.up.sql", "8133cac4a6b517ea33b9f527a68bc232df86b606df420f1d43f2e2dc65d55755")
ENCODE_PLPYTHON = ("0004_encode_query_plpython.sql", "25420a3b642433983463c2639f2da9344664f93ee13328a55b818c80e4e5efef")
ENCODE_SQL = ("0004_encode_query_sql.sql", "947dd9470a7120d2910f5d2c9ea020df3ed3ff6f74e6ea396dd110161e00c26c")
DOWN = ("0004_encode_query.down.sql", "a8b60379480d225aabffe9fce0827347bb94710b876073fadbfc24cbf989c5cd")


def _run(bind, name: str, digest: str) -> None:  # type: ignore[no-untyped-def]
    conn = driver_connection(bind)
    row = conn.execute(
        "SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_extension e"
        " JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
    ).fetchone()
    schema = row[0] if row else "public"
    conn.execute(read_frozen(name, digest).replace("@vector@", schema).encode())


def upgrade() -> None:
    from alembic import op

    bind = op.get_bind()
    _run(bind, *(ENCODE_PLPYTHON if server_has_plpython(bind) else ENCODE_SQL))
    _run(bind, *UP)


def downgrade() -> None:
    from alembic import op

    _run(op.get_bind(), *DOWN)

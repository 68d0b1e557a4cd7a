"""Query text from SQL: maxsim.encode_query(index, text) -> halfvec[] and the query cache.

Revision ID: 0004
Revises: 0003

``maxsim.encode_query`` comes in two implementations with one signature
(feature detection, not configuration): with plpython3u it asks the scorer
service (``pgmaxsim scorer``), which hosts each index's query encoder; without
it, it answers from ``maxsim.query_cache`` only and otherwise raises an error
saying how to encode the query. ``@vector@`` is replaced by pgvector's schema.
"""

from pgmaxsim.db.sqlfiles import driver_connection, read_frozen, server_has_plpython

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UP = ("0004_encode_query.up.sql", "63baeccdfe271c6eecc4fa3beeb288eb1da5b55ac61e341407db54ef3b16a185")
ENCODE_PLPYTHON = ("0004_encode_query_plpython.sql", "0d9987230e946909ad394578a36d6f333643bd4cbae7fe1173e953adfe3460f9")
ENCODE_SQL = ("0004_encode_query_sql.sql", "ec5dbb37ac0bcf75d9d0a983e7205f49a4f3a09d9582e568440b677945f83de0")
DOWN = ("0004_encode_query.down.sql", "61f5798617f15b6b1c2ad1042ae7bb141f367d3aed004efae2d0f0b83a872238")


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
    _run(bind, *UP)
    _run(bind, *(ENCODE_PLPYTHON if server_has_plpython(bind) else ENCODE_SQL))


def downgrade() -> None:
    from alembic import op

    _run(op.get_bind(), *DOWN)

"""Indexes: token tables, pooled-vector ANN, change capture, and the public SQL functions.

Revision ID: 0002
Revises: 0001

The scoring functions come in two implementations with the same signatures:
PL/Python + NumPy when the server has plpython3u, pure SQL otherwise (feature
detection, not configuration). The SQL files name pgvector's objects through
the placeholder ``@vector@``, replaced here by the schema pgvector lives in, so
every function can pin ``search_path`` to ``pg_catalog, pg_temp``.
"""

from pgmaxsim.db.sqlfiles import driver_connection, read_frozen, server_has_plpython

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCORING_PLPYTHON = ("0002_scoring_plpython.sql", "1231483b61f607b274919ab8d01e1a219f8449d7cbea46f1205489135a7ecbb1")
SCORING_SQL = ("0002_scoring_sql.sql", "0af3fc8341ac9815ad62c1779e5481e46d4c33020c6385ca7fb8f1236ebe79bc")
INDEX_UP = ("0002_index.up.sql", "88bef6c7315f452cf84ef3c73cfee4a7026e420c521bbdf805a6ce0e00d49255")
INDEX_DOWN = ("0002_index.down.sql", "4700fb8ef3f539cbed41225d62cfa36b0f95b4e06e1cdef18a143f063267ee27")


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
    scoring = SCORING_PLPYTHON if server_has_plpython(bind) else SCORING_SQL
    _run(bind, *scoring)
    _run(bind, *INDEX_UP)


def downgrade() -> None:
    from alembic import op

    _run(op.get_bind(), *INDEX_DOWN)

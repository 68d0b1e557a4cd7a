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

SCORING_PLPYTHON = ("0002_scoring_plpython.sql", "4741f1c46005dd143eb753de43e3483060434dde76aa94c5df185a58685f14cb")
SCORING_SQL = ("0002_scoring_sql.sql", "1f514f0f19bdf6a88630ab589134be880419b6ade9060dc3ee774eead073064b")
INDEX_UP = ("0002_index.up.sql", "333eddb510052e0a1a8fb78cf5d125df84c376cdcd268f72401fc48c182e4ded")
INDEX_DOWN = ("0002_index.down.sql", "a26b05c1786c0a6f5d8e309e02aac33adc279a611c49b7a67fcc3c2372d93fc7")


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

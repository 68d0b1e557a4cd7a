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

SCORING_PLPYTHON = ("0002_scoring_plpython.sql", "54b6dc79d798b8209f9901f6e6d282377325a89ffec8b35eb82a5962db7c93fe")
SCORING_SQL = ("0002_scoring_sql.sql", "a0b4a47851372ca6f2148f9f50e3c859ac9e520e9ffb7b258b22efbb1450502f")
INDEX_UP = ("0002_index.up.sql", "8dfb0356bd3e510740b855b87b378c43c889de7c21260fb1a21fc54959280b6c")
INDEX_DOWN = ("0002_index.down.sql", "37d956e4cd4267aef6f3d78dd89ee91ba8add5195a16fd7d869e62d30f2d8ff3")


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

"""Indexes: token tables, pooled-vector ANN, change capture, and the public SQL functions.

Revision ID: 0002
Revises: 0001

The scoring functions come in two implementations with the same signatures:
PL/Python + NumPy when the server has plpython3u, pure SQL otherwise (feature
detection, not configuration). The SQL files name pgvector's objects through
the placeholder ``@vector@``, replaced here by the schema pgvector lives in, so
every function can pin ``search_path`` to ``pg_catalog, pg_temp``.
"""

from pgmaxsim.db.sqlfiles import run_sql_file, server_has_plpython

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCORING_PLPYTHON = ("0002_scoring_plpython.sql", "4741f1c46005dd143eb753de43e3483060434dde76aa94c5df185a58685f14cb")
SCORING_SQL = ("0002_scoring_sql.sql", "1f514f0f19bdf6a88630ab589134be880419b6ade9060dc3ee774eead073064b")
INDEX_UP = ("0002_index.up.sql", "333eddb510052e0a1a8fb78cf5d125df84c376cdcd268f72401fc48c182e4ded")
INDEX_DOWN = ("0002_index.down.sql", "a26b05c1786c0a6f5d8e309e02aac33adc279a611c49b7a67fcc3c2372d93fc7")


def upgrade() -> None:
    from alembic import op

    bind = op.get_bind()
    scoring = SCORING_PLPYTHON if server_has_plpython(bind) else SCORING_SQL
    run_sql_file(*scoring, bind=bind)
    run_sql_file(*INDEX_UP, bind=bind)


def downgrade() -> None:
    run_sql_file(*INDEX_DOWN)

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

from pgmaxsim.db.sqlfiles import run_sql_file, server_has_plpython

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UP = ("0004_encode_query.up.sql", "8133cac4a6b517ea33b9f527a68bc232df86b606df420f1d43f2e2dc65d55755")
ENCODE_PLPYTHON = ("0004_encode_query_plpython.sql", "25420a3b642433983463c2639f2da9344664f93ee13328a55b818c80e4e5efef")
ENCODE_SQL = ("0004_encode_query_sql.sql", "947dd9470a7120d2910f5d2c9ea020df3ed3ff6f74e6ea396dd110161e00c26c")
DOWN = ("0004_encode_query.down.sql", "a8b60379480d225aabffe9fce0827347bb94710b876073fadbfc24cbf989c5cd")


def upgrade() -> None:
    from alembic import op

    bind = op.get_bind()
    run_sql_file(*(ENCODE_PLPYTHON if server_has_plpython(bind) else ENCODE_SQL), bind=bind)
    run_sql_file(*UP, bind=bind)


def downgrade() -> None:
    run_sql_file(*DOWN)

"""The privilege model's tables; every function moves to the idempotent files.

Revision ID: 0006
Revises: 0005

From this revision on, the functions of schema ``maxsim`` are not installed by
revisions: ``pgmaxsim migrate`` applies ``sql/idempotent/`` whenever it leaves
the schema at its newest revision (pgmaxsim.db.sqlfiles.apply_functions). This
revision changes tables only. Its downgrade removes the idempotent functions and
puts back those of revisions 0001-0005 from their own released files.
"""

from pgmaxsim.db.sqlfiles import driver_connection, drop_functions, run_sql_file, server_has_plpython

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UP = ("0006_security.up.sql", "da570383224cc2374b92872916ebdaa92d3ea6e387e51f5906953de271249ad9")
DOWN = ("0006_security.down.sql", "a96c5df50bab8cee48b02d50c76dec54aa33f63a4eda740d603146f079c1a91c")

# The function files of the revisions before this one, as pinned there.
FOUNDATION = ("0001_foundation.up.sql", "242aa53b44f7d76283f368f274ad61b610acdbdb3d603986c4428855401f0ca5")
SCORING_PLPYTHON = ("0002_scoring_plpython.sql", "4741f1c46005dd143eb753de43e3483060434dde76aa94c5df185a58685f14cb")
SCORING_SQL = ("0002_scoring_sql.sql", "1f514f0f19bdf6a88630ab589134be880419b6ade9060dc3ee774eead073064b")
INDEX_UP = ("0002_index.up.sql", "333eddb510052e0a1a8fb78cf5d125df84c376cdcd268f72401fc48c182e4ded")
ENCODE_PLPYTHON = ("0004_encode_query_plpython.sql", "25420a3b642433983463c2639f2da9344664f93ee13328a55b818c80e4e5efef")
ENCODE_SQL = ("0004_encode_query_sql.sql", "947dd9470a7120d2910f5d2c9ea020df3ed3ff6f74e6ea396dd110161e00c26c")
ENCODE_UP = ("0004_encode_query.up.sql", "8133cac4a6b517ea33b9f527a68bc232df86b606df420f1d43f2e2dc65d55755")


def upgrade() -> None:
    run_sql_file(*UP)


def downgrade() -> None:
    from alembic import op

    bind = op.get_bind()
    drop_functions(driver_connection(bind))
    plpython = server_has_plpython(bind)
    for pinned in (FOUNDATION, SCORING_PLPYTHON if plpython else SCORING_SQL, INDEX_UP,
                   ENCODE_PLPYTHON if plpython else ENCODE_SQL, ENCODE_UP):
        run_sql_file(*pinned, bind=bind, functions_only=True)
    run_sql_file(*DOWN, bind=bind)

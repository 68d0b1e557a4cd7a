"""Scorer service: the writer's transaction id (xid8) on every change-log row.

Revision ID: 0005
Revises: 0004

The scorer service (``pgmaxsim scorer``) syncs a token table by reading the
changes whose xid its previous sync snapshot did not see, and a caller checks a
scorer answer against its own snapshot the same way (pgmaxsim.plpy.remote).
"""

from pgmaxsim.db.sqlfiles import run_sql_file

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UP = ("0005_scorer.up.sql", "8b9af3e717a0f78dd347290aade0a5173f0bee6723c07e8f139297f5fa5c81da")
DOWN = ("0005_scorer.down.sql", "8c2bc56b0cebf39c34db21772d3a217496cfa569f13ae8334a6ae31a33e0e14a")


def upgrade() -> None:
    run_sql_file(*UP)


def downgrade() -> None:
    run_sql_file(*DOWN)

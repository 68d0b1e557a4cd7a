"""Index storage and search: create_index/drop_index, token tables, search/rerank/maxsim.

Revision ID: 0002
Revises: 0001
"""

from pgmaxsim.db.sqlfiles import run_sql_file

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0002_index.up.sql", "e622008265cddf8c8def25fcca720b9299bda8f4ad1631bcc1281be2a1a7ce01")


def downgrade() -> None:
    run_sql_file("0002_index.down.sql", "6ea09bbcd1b26bdd3e46e75e02b2db56907d21b92caa9cd6098ce6732e747898")

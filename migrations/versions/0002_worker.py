"""Worker: ingest log (throughput), worker state columns, re-embedding state.

Revision ID: 0002
Revises: 0001
"""

from pgmaxsim.db.sqlfiles import run_sql_file

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0002_worker.up.sql", "1ef54e5cd1b2b86c9becae16340f7368b094b60f6ad73f3f1ad0a98ee44b004d")


def downgrade() -> None:
    run_sql_file("0002_worker.down.sql", "e58ccd19a3b115244e2a476a7e03425157e11425d89256bd5080a3a597ba76aa")

"""Worker: ingest log (throughput), worker state columns, re-embedding state.

Revision ID: 0003
Revises: 0002
"""

from pgmaxsim.db.sqlfiles import run_sql_file

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0003_worker.up.sql", "2a4d15360aab7e7e403d5a72cb864db4c1aa012d5db4cab029996515c9466afb")


def downgrade() -> None:
    run_sql_file("0003_worker.down.sql", "ba62730a23ab323292217ead19663db10fa9a0b70a2a5eed99611e3f9e7978b1")

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
    run_sql_file("0003_worker.up.sql", "a65b74905e765992f94bb142c9261d5c45b4e89ec5e94b9d93f2b489a4e9c765")


def downgrade() -> None:
    run_sql_file("0003_worker.down.sql", "2b01eccabd9ecdeebf4af72de025a06a70a20ac496aeb652b80df3c54c1c69dd")

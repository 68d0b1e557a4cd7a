"""Foundation: schema maxsim, extensions, index registry, queue, failed items, workers.

Revision ID: 0001
Revises:
"""

from pgmaxsim.db.sqlfiles import run_sql_file

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0001_foundation.up.sql", "242aa53b44f7d76283f368f274ad61b610acdbdb3d603986c4428855401f0ca5")


def downgrade() -> None:
    run_sql_file("0001_foundation.down.sql", "eb0359f9dc74a3269aab3e9d13565e5859d09f4e854506ef4f574ac52d1ecad9")

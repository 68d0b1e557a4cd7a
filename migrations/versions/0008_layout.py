"""Token tables gain ``layout bytea``: where each token of a row came from (explain).

Revision ID: 0008
Revises: 0007

The worker stores each row's layout at ingest (pgmaxsim.encoders.layout: image patches
on the processor's grid, or character spans of the text); ``maxsim.explain`` reads it.
Existing rows keep NULL until embedded again. Tables only: functions are in sql/idempotent/.
"""

from pgmaxsim.db.sqlfiles import run_sql_file

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UP = ("0008_layout.up.sql", "510eec772e95212dc49a3a0ca16578992adb3235c58ec25a44d5bd039532028e")
DOWN = ("0008_layout.down.sql", "761796dba9541cafead0b5323d986281079089084dc1a0dbc43df5170638e997")


def upgrade() -> None:
    run_sql_file(*UP)


def downgrade() -> None:
    run_sql_file(*DOWN)

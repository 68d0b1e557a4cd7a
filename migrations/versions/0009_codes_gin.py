"""Codebook token tables lose the GIN over their codes where plpython3u is installed.

Revision ID: 0009
Revises: 0008

With plpython3u the codebook first stage is the sketch lists with centroid interaction over
the codes (pgmaxsim.plpy.sketch.candidates): the GIN was read by nothing and cost ~0.7 % of
the raw fp16 bytes and ~2.5 ms of server time a written row. Servers without plpython3u keep
it (their first stage). Tables only: functions are in sql/idempotent/.
"""

from pgmaxsim.db.sqlfiles import run_sql_file

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UP = ("0009_codes_gin.up.sql", "c5a345709a22215f0cd4a17e18988f7b6f15ced9f4749054c77673cbeabdf3c5")
DOWN = ("0009_codes_gin.down.sql", "39e25b6f16e16c0bcdcdbf717a42905f945333284f10d53673cc81db43984e6c")


def upgrade() -> None:
    run_sql_file(*UP)


def downgrade() -> None:
    run_sql_file(*DOWN)

"""One stored copy of the tokens per row, in the index's storage tier (fp16 | int8).

Revision ID: 0007
Revises: 0006

Token tables: ``tokens bytea`` in the tier's byte layout (pgmaxsim.scoring.quantize)
replaces ``tokens halfvec[]`` + ``tokens_packed``; ``n_raw_tokens`` keeps the count
before token pooling. Existing (fp16) rows are converted in SQL; registry options
gain ``storage`` and ``pool_factor``. Tables only: functions are in sql/idempotent/.
The downgrade converts fp16 indexes back and refuses int8 ones.
"""

from pgmaxsim.db.sqlfiles import run_sql_file

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UP = ("0007_tiers.up.sql", "f916415361bee5044c73cef82a24ec0d0d475545cf75f399f29c8f9fc0101a6d")
DOWN = ("0007_tiers.down.sql", "10d3e22651223dca6e6417a091837299f051f341f84d8c8d5e0b27cac993d522")


def upgrade() -> None:
    run_sql_file(*UP)


def downgrade() -> None:
    run_sql_file(*DOWN)

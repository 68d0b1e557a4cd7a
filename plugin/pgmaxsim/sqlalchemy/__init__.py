"""SQLAlchemy 2 integration: a multi-vector column type, MaxSim search as a selectable, alembic operations.

Importing this package registers ``op.create_maxsim_index`` and
``op.drop_maxsim_index`` with alembic.
"""

from pgmaxsim.sqlalchemy.alembic import CreateMaxsimIndexOp, DropMaxsimIndexOp
from pgmaxsim.sqlalchemy.search import maxsim_rerank, maxsim_search, query_expression
from pgmaxsim.sqlalchemy.types import HalfvecArray

__all__ = [
    "CreateMaxsimIndexOp",
    "DropMaxsimIndexOp",
    "HalfvecArray",
    "maxsim_rerank",
    "maxsim_search",
    "query_expression",
]

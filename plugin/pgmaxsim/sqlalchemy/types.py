"""``HalfvecArray(dim)``: a SQLAlchemy column type for multi-vectors (``halfvec(dim)[]``), NumPy in and out.

Values bound to it are ``(n_tokens, dim)`` arrays (any float dtype, or nested
lists); values read back are ``(n_tokens, dim)`` ``float16`` arrays, exactly
what is stored. Reading goes through PostgreSQL's binary array format
(``array_send``) and pgmaxsim's one codec, not through text parsing.

>>> from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
>>> class Base(DeclarativeBase): ...
>>> class Page(Base):
...     __tablename__ = "pages"
...     id: Mapped[int] = mapped_column(primary_key=True)
...     tokens = mapped_column(HalfvecArray(128))
>>> str(Page.__table__.c.tokens.type.compile())
'halfvec(128)[]'
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import func
from sqlalchemy.types import Float, UserDefinedType

from pgmaxsim.db.adapters import tokens_from_text, tokens_to_text
from pgmaxsim.db.codec import decode_halfvec_array


class HalfvecArray(UserDefinedType):  # type: ignore[type-arg]
    """``halfvec(dim)[]`` ↔ ``numpy.ndarray`` of shape ``(n_tokens, dim)``.

    ``dim`` may be None for an unconstrained ``halfvec[]`` (e.g. a query parameter).
    ``column.maxsim(query)`` is the scalar ``maxsim.maxsim(column, query)`` score.
    """

    cache_ok = True

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        if dim is not None and not 1 <= int(dim) <= 16000:
            raise ValueError(f"halfvec dim must be between 1 and 16000, got {dim}")
        self.dim = None if dim is None else int(dim)

    def get_col_spec(self, **kw: Any) -> str:
        return "halfvec[]" if self.dim is None else f"halfvec({self.dim})[]"

    # -- Python → database: the text literal (works with every driver and in literal_binds)
    def bind_processor(self, dialect: Any) -> Any:
        dim = self.dim

        def process(value: Any) -> Any:
            if value is None or isinstance(value, str):
                return value
            arr = np.asarray(value, dtype=np.float32)
            if arr.ndim != 2:
                raise ValueError(f"a multi-vector must be a 2-D (n_tokens, dim) array, got shape {arr.shape}")
            if dim is not None and arr.shape[1] != dim:
                raise ValueError(f"a multi-vector of dim {arr.shape[1]} bound to a halfvec({dim})[] column")
            return tokens_to_text(arr)

        return process

    def literal_processor(self, dialect: Any) -> Any:
        bind = self.bind_processor(dialect)

        def process(value: Any) -> str:
            text = bind(value)
            return "'" + text.replace("'", "''") + "'::" + self.get_col_spec()

        return process

    def bind_expression(self, bindvalue: Any) -> Any:
        from sqlalchemy import cast

        return cast(bindvalue, _Spec(self.get_col_spec()))

    # -- database → Python: array_send() gives the binary format, decoded by the shared codec
    def column_expression(self, colexpr: Any) -> Any:
        return func.array_send(colexpr, type_=self)

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        def process(value: Any) -> Any:
            if value is None:
                return None
            if isinstance(value, np.ndarray):  # a connection with pgmaxsim.db.adapters.register_tokens
                return value
            if isinstance(value, str):
                return tokens_from_text(value)
            return decode_halfvec_array(value)

        return process

    class comparator_factory(UserDefinedType.Comparator):  # type: ignore[type-arg]
        def maxsim(self, query: Any) -> Any:
            """``maxsim.maxsim(self, query)``: the MaxSim score of this multi-vector for ``query``."""
            from pgmaxsim.sqlalchemy.search import query_expression

            return func.maxsim.maxsim(self.expr, query_expression(None, query), type_=Float())


class _Spec(UserDefinedType):  # type: ignore[type-arg]
    """A plain cast target (no processors), so casts do not recurse into HalfvecArray."""

    cache_ok = True

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def get_col_spec(self, **kw: Any) -> str:
        return self.spec

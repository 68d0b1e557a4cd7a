"""``maxsim_search`` / ``maxsim_rerank``: MaxSim results as selectables to join in ``select()``.

>>> from sqlalchemy import Integer, select
>>> hits = maxsim_search("pages", query_tokens, k=10, id_type=Integer)      # doctest: +SKIP
>>> stmt = (select(Page, hits.c.score)                                      # doctest: +SKIP
...         .join(hits, Page.id == hits.c.id)
...         .order_by(hits.c.score.desc()))

``query`` is an ``(n_tokens, dim)`` array (bound as ``halfvec[]``), a query
*text* (encoded in the database by ``maxsim.encode_query(index, text)``, which
needs the scorer service), or any SQL expression of type ``halfvec[]``.

``maxsim.search`` returns the key as text (lossless for every key type);
``id_type`` (a SQLAlchemy type, or a column such as ``Page.id`` whose type is
taken) casts it back, so the join uses the source's primary-key index.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import Integer, Text, cast, column, func, literal, null, select
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.types import ARRAY, REAL, TypeEngine

from pgmaxsim.sqlalchemy.types import HalfvecArray


def _type_of(id_type: Any) -> TypeEngine[Any]:
    if id_type is None:
        return Text()
    if isinstance(id_type, TypeEngine):
        return id_type
    if isinstance(id_type, type) and issubclass(id_type, TypeEngine):
        return id_type()
    t = getattr(id_type, "type", None)  # a Column / InstrumentedAttribute
    if isinstance(t, TypeEngine):
        return t
    raise TypeError(f"id_type must be a SQLAlchemy type or a column, not {type(id_type).__name__}")


def query_expression(index: str | None, query: Any) -> Any:
    """The SQL expression of a query: array → bound ``halfvec[]``; text → ``maxsim.encode_query``."""
    if isinstance(query, ClauseElement):
        return query
    if isinstance(query, str):
        if index is None:
            raise TypeError("a text query needs an index (its model encodes the text)")
        return func.maxsim.encode_query(literal(index, Text()), literal(query, Text()), type_=HalfvecArray())
    arr = np.asarray(query, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"a query must be a non-empty (n_tokens, dim) array, got shape {arr.shape}")
    return literal(arr, HalfvecArray())


def maxsim_search(index: str, query: Any, k: int = 10, candidates: int | None = None, *,
                  id_type: Any = None, name: str = "hits") -> Any:
    """A subquery ``name(id, score)`` over ``maxsim.search(index, query, k, candidates)``.

    ``candidates``: rows passed from the ANN prefilter to exact scoring (None: the
    index's default; >= the row count: exact search).
    """
    cand = null() if candidates is None else literal(int(candidates), Integer())
    fn = func.maxsim.search(literal(index, Text()), query_expression(index, query), literal(int(k), Integer()),
                            cast(cand, Integer())).table_valued(column("id", Text()), column("score", REAL()))
    key_type = _type_of(id_type)
    key = fn.c.id if isinstance(key_type, Text) else cast(fn.c.id, key_type)
    return select(key.label("id"), fn.c.score.label("score")).subquery(name)


def maxsim_rerank(index: str, query: Any, ids: Any, k: int | None = None, *, id_type: Any = None,
                  name: str = "hits") -> Any:
    """A subquery ``name(id, score)`` over ``maxsim.rerank``: exact MaxSim of the rows ``ids``.

    ``ids``: a Python list (typed by ``id_type``), a ``select()`` of one key
    column (e.g. rows passing a WHERE clause or full-text search), or an SQL
    array expression. Ids not in the index are ignored.
    """
    from sqlalchemy.sql import Select

    key_type = _type_of(id_type)
    if isinstance(ids, Select):
        sub = ids.subquery()
        first = list(sub.c)[0]
        arr = select(func.array_agg(first)).scalar_subquery()
        key_type = first.type if id_type is None else key_type
    elif isinstance(ids, ClauseElement):
        arr = ids
    else:
        arr = literal(list(ids), ARRAY(key_type))
    kk = null() if k is None else literal(int(k), Integer())
    fn = func.maxsim.rerank(literal(index, Text()), query_expression(index, query), arr,
                            cast(kk, Integer())).table_valued(column("id", key_type), column("score", REAL()))
    return select(fn.c.id.label("id"), fn.c.score.label("score")).subquery(name)

"""``pgmaxsim.Index``: the Python face of one index.

>>> idx = Index.create(conn, "pages", "docs", "id", dim=128)        # doctest: +SKIP
>>> idx.upsert([1, 2], [emb1, emb2])                                 # doctest: +SKIP
>>> idx.search(query_tokens, k=5)                                    # doctest: +SKIP
[(2, 17.3), (1, 11.9)]

Writes go through :func:`pgmaxsim.writes.write_rows` (binary COPY); searches
call the SQL functions (``maxsim.search`` / ``maxsim.rerank``), so the Python
API and SQL always agree. Ids come back as the key's Python type (int, UUID, str).
Queries are text, a PIL image (both encoded by the index's own model, loaded
once per process) or an ``(n, d)`` token array; results are
:class:`~pgmaxsim.search.Hit` pairs ``(id, score)`` that carry the source row when
asked (``rows=``), optionally restricted by a ``filter=`` on the source table
(all in :mod:`pgmaxsim.search`). ``conn`` is a psycopg 3 connection or a pool
(``psycopg_pool.ConnectionPool``): each call then borrows a connection.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg

from pgmaxsim import explain as explaining
from pgmaxsim import search as queries
from pgmaxsim import writes
from pgmaxsim.errors import PgmaxsimError, one_line
from pgmaxsim.explain import Explanation
from pgmaxsim.registry import IndexSpec, get_index
from pgmaxsim.search import FILTER_RERANK_LIMIT, Filter, Hit, borrow


def _server_error(e: psycopg.Error) -> PgmaxsimError:
    return PgmaxsimError(one_line(e))


class Index:
    """One pgmaxsim index on a psycopg 3 connection or pool.

    ``encoder``: the encoder of text and image queries (default: the index's
    model, loaded once per process by :func:`pgmaxsim.search.encoder_for`).
    ``filter_rerank_limit``: see :meth:`search`.
    """

    def __init__(self, conn: Any, name: str, *, encoder: Any = None) -> None:
        self.conn = conn
        self.name = name
        self.encoder = encoder
        self.filter_rerank_limit = FILTER_RERANK_LIMIT
        self._info: IndexSpec | None = None

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, conn: Any, name: str, source: str, id_column: str, *,
               text_column: str | None = None, image_column: str | None = None, model: str | None = None,
               dim: int | None = None, pooling: str | None = None, **options: Any) -> Index:
        """``maxsim.create_index``; ``pooling`` and other keyword options go to its options."""
        if pooling is not None:
            options["pooling"] = pooling
        try:
            with borrow(conn) as c:
                c.execute(
                    "SELECT maxsim.create_index(%s, %s::regclass, %s, %s, %s, %s, %s, %s::jsonb)",
                    (name, source, id_column, text_column, image_column, model, dim, json.dumps(options)),
                )
        except psycopg.Error as e:
            raise _server_error(e) from None
        return cls(conn, name)

    def drop(self) -> None:
        """``maxsim.drop_index``: remove the index and everything it created."""
        self._sql("SELECT maxsim.drop_index(%s)", (self.name,))
        self._info = None

    @property
    def info(self) -> IndexSpec:
        if self._info is None:
            with borrow(self.conn) as c:
                self._info = get_index(c, self.name)
        return self._info

    def _info_on(self, c: psycopg.Connection[Any]) -> IndexSpec:
        if self._info is None:
            self._info = get_index(c, self.name)
        return self._info

    def __len__(self) -> int:
        rows = self._sql("SELECT rows FROM maxsim.index_info(%s)", (self.name,))
        return int(rows[0][0]) if rows else 0

    # ------------------------------------------------------------------ writes
    def upsert(self, ids: Sequence[Any], embeddings: Sequence[Any], *, model: str | None = None,
               model_revision: str | None = None, content_hashes: Sequence[bytes | None] | None = None) -> int:
        """Write rows' token embeddings (``(n_i, d)`` arrays) by binary COPY; returns rows written."""
        try:
            with borrow(self.conn) as c:
                return writes.write_rows(c, self._info_on(c), ids, embeddings, model=model,
                                          model_revision=model_revision, content_hashes=content_hashes)
        except psycopg.Error as e:
            raise _server_error(e) from None

    def delete(self, ids: Sequence[Any]) -> int:
        """Remove rows' embeddings; ids not in the index are ignored. Returns rows removed."""
        try:
            with borrow(self.conn) as c:
                return writes.delete_rows(c, self._info_on(c), ids)
        except psycopg.Error as e:
            raise _server_error(e) from None

    # ------------------------------------------------------------------ reads
    def search(self, query: Any, k: int = 10, candidates: int | None = None, *, filter: Filter = None,
               params: Any = None, rows: bool | Sequence[str] = False) -> list[Hit]:
        """Top-``k`` rows by MaxSim, best first, as :class:`~pgmaxsim.search.Hit` ``(id, score)`` pairs.

        ``query``: text or a PIL image (encoded by the index's model) or an
        ``(n, d)`` array of token embeddings. ``candidates``: rows passed from the
        ANN prefilter to exact scoring (None: the index's default; >= the row
        count: exact search). ``filter``: only source rows matching it: SQL text
        on the source table's columns (``params`` fill its ``%s`` placeholders)
        or a ``{column: value}`` mapping. A filter matching at most
        ``self.filter_rerank_limit`` rows scores all of them exactly
        (``maxsim.rerank``); a broader one searches deeper and post-filters.
        ``rows``: attach each hit's source row as ``hit.row`` (a dict): True for
        every column, or a list of column names. Rows still queued for the
        worker are not searched: a :class:`~pgmaxsim.search.PendingRowsWarning`
        says how many.
        """
        with borrow(self.conn) as c:
            return queries.search(c, self.name, query, k, candidates, filter=filter, params=params, rows=rows,
                                  encoder=self.encoder, filter_rerank_limit=self.filter_rerank_limit,
                                  info=self._info_on(c))

    def rerank(self, query: Any, ids: Sequence[Any], k: int | None = None, *,
               rows: bool | Sequence[str] = False) -> list[Hit]:
        """Exact MaxSim of the given rows, best first (ids not in the index are ignored)."""
        with borrow(self.conn) as c:
            return queries.rerank(c, self.name, query, ids, k, rows=rows, encoder=self.encoder,
                                  info=self._info_on(c))

    def explain(self, query: Any, id: Any) -> Explanation:
        """Why row ``id`` matched ``query`` (text, PIL image or ``(n, d)`` array): each query
        token's best document token, its score (they sum to the row's MaxSim) and where it
        sits (patch on the page, or characters of the text). See :mod:`pgmaxsim.explain`."""
        with borrow(self.conn) as c:
            return explaining.explain(c, self.name, query, id, encoder=self.encoder, info=self._info_on(c))

    def cache_query(self, text: str) -> np.ndarray:
        """Encode ``text`` here and keep it in ``maxsim.query_cache``, so that SQL's
        ``maxsim.encode_query(name, text)`` answers it without the scorer service
        (servers without plpython3u). Returns the tokens."""
        with borrow(self.conn) as c:
            return queries.cache_query(c, self.name, text, encoder=self.encoder, info=self._info_on(c))

    # ------------------------------------------------------------------ plumbing
    def _sql(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run one statement on a (borrowed) connection and return its rows."""
        try:
            with borrow(self.conn) as c, c.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description is not None else []
        except psycopg.Error as e:
            raise _server_error(e) from None

"""``pgmaxsim.Index``: the Python face of one index.

>>> idx = Index.create(conn, "pages", "docs", "id", dim=128)        # doctest: +SKIP
>>> idx.upsert([1, 2], [emb1, emb2])                                 # doctest: +SKIP
>>> idx.search(query_tokens, k=5)                                    # doctest: +SKIP
[(2, 17.3), (1, 11.9)]

Writes go through :func:`pgmaxsim.storage.write_rows` (binary COPY); searches
call the SQL functions (``maxsim.search`` / ``maxsim.rerank``), so the Python
API and SQL always agree. Ids come back as the key's Python type (int, UUID, str).
Queries are turned into token arrays by :meth:`Index._query_tokens`; an array is
used as is (other query kinds, e.g. text or images through the index's model,
extend that one method).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

from pgmaxsim import storage
from pgmaxsim.db.codec import CodecError, encode_halfvec_array
from pgmaxsim.db.connect import first_line
from pgmaxsim.errors import PgmaxsimError


class _QueryTokens:
    """An ``(n, d)`` array sent as ``halfvec[]`` (binary) by this module's cursors."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


def _server_error(e: psycopg.Error) -> PgmaxsimError:
    msg = first_line(e)
    for prefix in ("pgmaxsim: ",):
        msg = msg.removeprefix(prefix)
    return PgmaxsimError(msg)


class Index:
    """One pgmaxsim index on a connection (psycopg 3)."""

    def __init__(self, conn: psycopg.Connection[Any], name: str) -> None:
        self.conn = conn
        self.name = name
        self._info: storage.IndexInfo | None = None
        self._array_oid: int | None = None

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, conn: psycopg.Connection[Any], name: str, source: str, id_column: str, *,
               text_column: str | None = None, image_column: str | None = None, model: str | None = None,
               dim: int | None = None, pooling: str | None = None, **options: Any) -> Index:
        """``maxsim.create_index``; ``pooling`` and other keyword options go to its options."""
        if pooling is not None:
            options["pooling"] = pooling
        try:
            conn.execute(
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
    def info(self) -> storage.IndexInfo:
        if self._info is None:
            self._info = storage.get_index(self.conn, self.name)
        return self._info

    def __len__(self) -> int:
        row = self._sql("SELECT rows FROM maxsim.index_info(%s)", (self.name,)).fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ writes
    def upsert(self, ids: Sequence[Any], embeddings: Sequence[Any], *, model: str | None = None,
               model_revision: str | None = None, content_hashes: Sequence[bytes | None] | None = None) -> int:
        """Write rows' token embeddings (``(n_i, d)`` arrays) by binary COPY; returns rows written."""
        try:
            return storage.write_rows(self.conn, self.info, ids, embeddings, model=model,
                                      model_revision=model_revision, content_hashes=content_hashes)
        except psycopg.Error as e:
            raise _server_error(e) from None

    def delete(self, ids: Sequence[Any]) -> int:
        """Remove rows' embeddings; ids not in the index are ignored. Returns rows removed."""
        try:
            return storage.delete_rows(self.conn, self.info, ids)
        except psycopg.Error as e:
            raise _server_error(e) from None

    # ------------------------------------------------------------------ reads
    def search(self, query: Any, k: int = 10, candidates: int | None = None) -> list[tuple[Any, float]]:
        """Top-``k`` rows by MaxSim as ``(id, score)``, best first (``maxsim.search``)."""
        q = self._query_tokens(query)
        rows = self._sql("SELECT id, score FROM maxsim.search(%s, %s, %s, %s)",
                         (self.name, _QueryTokens(q), k, candidates)).fetchall()
        return [(self.info.key_from_text(i), float(s)) for i, s in rows]

    def rerank(self, query: Any, ids: Sequence[Any], k: int | None = None) -> list[tuple[Any, float]]:
        """Exact MaxSim of the given rows, best first (ids not in the index are ignored)."""
        q = self._query_tokens(query)
        keys = [self.info.key_text(i) for i in ids]
        rows = self._sql("SELECT id, score FROM maxsim._rerank(%s, %s, %s::text[], %s)",
                         (self.name, _QueryTokens(q), keys, k)).fetchall()
        return [(self.info.key_from_text(i), float(s)) for i, s in rows]

    def _query_tokens(self, query: Any) -> np.ndarray:
        """A query as an ``(n, d)`` float array (extension point for other query kinds)."""
        if isinstance(query, (str, bytes)) or not hasattr(query, "__array__") and not isinstance(query, (list, tuple)):
            raise PgmaxsimError(
                f"index {self.name!r}: query must be an (n_tokens, dim) array of token embeddings,"
                f" got {type(query).__name__}")
        q = np.asarray(query)
        if q.ndim != 2 or q.shape[0] == 0:
            raise PgmaxsimError(f"query must be a non-empty (n_tokens, dim) array, got shape {q.shape}")
        if q.shape[1] != self.info.dim:
            raise PgmaxsimError(f"query vectors have {q.shape[1]} dimensions, index {self.name!r} has {self.info.dim}")
        if not np.issubdtype(q.dtype, np.number) or not np.isfinite(q.astype(np.float16)).all():
            raise PgmaxsimError("query contains NaN or infinite values (or values beyond fp16 range)")
        return q

    # ------------------------------------------------------------------ plumbing
    def _cursor(self) -> psycopg.Cursor[Any]:
        info = self.info
        if self._array_oid is None:
            row = self.conn.execute("SELECT typarray FROM pg_catalog.pg_type WHERE oid = %s",
                                    (info.halfvec_oid,)).fetchone()
            self._array_oid = int(row[0]) if row else 0
        elem_oid, array_oid = info.halfvec_oid, self._array_oid

        class QueryDumper(Dumper):
            format = Format.BINARY
            oid = array_oid

            def dump(self, obj: _QueryTokens) -> bytes:
                try:
                    return encode_halfvec_array(obj.array, elem_oid)
                except CodecError as e:
                    raise PgmaxsimError(f"query: {e}") from None

        cur = self.conn.cursor()
        cur.adapters.register_dumper(_QueryTokens, QueryDumper)
        return cur

    def _sql(self, query: str, params: Sequence[Any]) -> psycopg.Cursor[Any]:
        try:
            return self._cursor().execute(query, params)
        except psycopg.Error as e:
            raise _server_error(e) from None

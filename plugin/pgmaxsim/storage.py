"""The writer of token rows: binary COPY into an index's token (and centroid) table.

``write_rows`` is THE write path (the ingestion worker and ``Index.upsert`` call it):

1. validate and pool each row in Python (``pgmaxsim.pooling``),
2. take a transaction-scoped advisory lock per row key (sorted, so concurrent writers
   of overlapping rows queue up instead of deadlocking or colliding),
3. delete the rows' previous embeddings (centroids go with them, ON DELETE CASCADE),
4. binary COPY the new token rows, then their centroids.

The whole write is one transaction (a savepoint when the caller already has one open,
e.g. the worker dequeuing in the same transaction), so it is idempotent per id: writing
the same rows twice leaves one copy of each. Run it at READ COMMITTED (the default).
Each written row gets a new ``version`` and a ``maxsim.changes`` entry from the token
table's trigger; ``tokens_packed`` (raw little-endian fp16, what the PL/Python scorer
reads) is written next to ``tokens`` unless the index has option ``packed: false``.

For model-backed indexes: a source row deleted while its embeddings are being computed
must not come back as orphan embeddings. Read the source rows with ``SELECT ... FOR KEY
SHARE`` in the transaction that calls ``write_rows``: a concurrent DELETE then waits for
that commit, and its trigger removes the rows just written.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from pgmaxsim import pooling
from pgmaxsim.db.codec import CodecError, encode_halfvec, encode_halfvec_array
from pgmaxsim.errors import PgmaxsimError
from pgmaxsim.registry import IndexSpec

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_NULL = struct.pack("!i", -1)


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Pooling does many small matrix products; BLAS threads only add overhead to those."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1):
        yield


def _field(data: bytes | None) -> bytes:
    return _NULL if data is None else struct.pack("!i", len(data)) + data


def _key_binary(index: IndexSpec, text: str) -> bytes:
    value = index.key_value(text)
    fmt = {"smallint": "!h", "integer": "!i", "bigint": "!q"}.get(index.id_type)
    if fmt is not None:
        return struct.pack(fmt, value)
    return value.bytes if index.id_type == "uuid" else str(value).encode("utf-8")


def _check_tokens(index: IndexSpec, key: str, emb: Any) -> np.ndarray:
    arr = np.asarray(emb)
    if arr.ndim != 2:
        raise PgmaxsimError(f"row {key}: embeddings must be a 2-D (n_tokens, dim) array, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise PgmaxsimError(f"row {key}: embeddings are empty (a row needs at least one token vector)")
    if arr.shape[1] != index.dim:
        raise PgmaxsimError(f"row {key}: embeddings have {arr.shape[1]} dimensions, index {index.name!r} has {index.dim}")
    if not np.issubdtype(arr.dtype, np.number):
        raise PgmaxsimError(f"row {key}: embeddings must be numeric, got dtype {arr.dtype}")
    return arr


def write_rows(
    conn: psycopg.Connection[Any],
    index: IndexSpec,
    ids: Sequence[Any],
    embeddings: Sequence[Any],
    *,
    model: str | None = None,
    model_revision: str | None = None,
    content_hashes: Sequence[bytes | None] | None = None,
) -> int:
    """Write (insert or replace) the token embeddings of rows ``ids``; returns rows written.

    ``embeddings[i]`` is an ``(n_i, dim)`` float array for ``ids[i]``. A key given twice
    keeps its last embeddings. Raises PgmaxsimError for bad input before writing anything.
    """
    if len(ids) != len(embeddings):
        raise PgmaxsimError(f"{len(ids)} ids but {len(embeddings)} embeddings")
    if content_hashes is not None and len(content_hashes) != len(ids):
        raise PgmaxsimError(f"{len(ids)} ids but {len(content_hashes)} content hashes")
    latest: dict[str, int] = {}
    for i, key in enumerate(ids):
        latest[index.key_text(key)] = i
    if not latest:
        return 0
    m = None if model is None else model.encode("utf-8")
    rev = None if model_revision is None else model_revision.encode("utf-8")
    tok_rows: list[bytes] = []
    cen_rows: list[bytes] = []
    with _one_blas_thread():
        _encode_rows(index, latest, embeddings, content_hashes, m, rev, tok_rows, cen_rows)
    keys = list(latest)
    _write(conn, index, keys, tok_rows, cen_rows)
    return len(keys)


def _encode_rows(index: IndexSpec, latest: dict[str, int], embeddings: Sequence[Any],
                 content_hashes: Sequence[bytes | None] | None, m: bytes | None, rev: bytes | None,
                 tok_rows: list[bytes], cen_rows: list[bytes]) -> None:
    for key, i in latest.items():
        arr = _check_tokens(index, key, embeddings[i])
        try:
            tokens = encode_halfvec_array(arr, index.halfvec_oid)
            pooled, cents = pooling.pool(arr.astype(np.float16).astype(np.float32), index.pooling, index.options)
            pooled_bin = encode_halfvec(pooled)
        except CodecError as e:
            raise PgmaxsimError(f"row {key}: {e}") from None
        kb = _key_binary(index, key)
        h = None if content_hashes is None else content_hashes[i]
        packed = np.ascontiguousarray(arr, dtype="<f2").tobytes() if index.packed else None
        tok_rows.append(struct.pack("!h", 8) + _field(kb) + _field(tokens) + _field(struct.pack("!i", len(arr)))
                        + _field(packed) + _field(pooled_bin) + _field(m) + _field(rev)
                        + _field(None if h is None else bytes(h)))
        if cents is not None:
            for c, vec in enumerate(cents):
                cen_rows.append(struct.pack("!h", 3) + _field(kb) + _field(struct.pack("!h", c))
                                + _field(encode_halfvec(vec)))


def _write(conn: psycopg.Connection[Any], index: IndexSpec, keys: list[str], tok_rows: list[bytes],
           cen_rows: list[bytes]) -> None:
    tok = sql.Identifier("maxsim", index.token_table)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "SELECT pg_catalog.pg_advisory_xact_lock(%s, s.h) FROM (SELECT DISTINCT pg_catalog.hashtext(x) AS h"
            " FROM pg_catalog.unnest(%s::text[]) AS u(x) ORDER BY 1) s",
            (index.id, keys),
        )
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE id = ANY (%s::text[]::{}[])").format(tok, sql.SQL(index.id_type)),
            (keys,),
        )
        _copy(cur, sql.SQL("COPY {} (id, tokens, n_tokens, tokens_packed, pooled, model, model_revision,"
                           " content_hash)"
                           " FROM STDIN (FORMAT binary)").format(tok), tok_rows)
        if cen_rows and index.centroid_table:
            _copy(cur, sql.SQL("COPY {} (row_id, c, vec) FROM STDIN (FORMAT binary)").format(
                sql.Identifier("maxsim", index.centroid_table)), cen_rows)


def _copy(cur: psycopg.Cursor[Any], statement: sql.Composed | str, rows: list[bytes]) -> None:
    with cur.copy(statement) as copy:
        copy.write(_COPY_HEADER)
        for row in rows:
            copy.write(row)
        copy.write(_COPY_TRAILER)


def delete_rows(conn: psycopg.Connection[Any], index: IndexSpec, ids: Sequence[Any]) -> int:
    """Remove rows' embeddings (ids not in the index are ignored); returns rows removed."""
    keys = [index.key_text(k) for k in ids]
    if not keys:
        return 0
    cur = conn.execute(
        sql.SQL("DELETE FROM {} WHERE id = ANY (%s::text[]::{}[])").format(
            sql.Identifier("maxsim", index.token_table), sql.SQL(index.id_type)),
        (keys,),
    )
    return cur.rowcount

"""The writer of token rows: binary COPY into an index's token (and centroid) table.

``write_rows`` is THE write path (the ingestion worker and ``Index.upsert`` call it):

1. validate each row (shape, dimensions, finite fp16 values, layouts): bad input fails here,
2. take a transaction-scoped advisory lock per row (:func:`row_lock_key`, sorted, so
   concurrent writers of overlapping rows queue up instead of deadlocking or colliding),
3. delete the rows' previous embeddings (:func:`delete_keys`, THE delete path; centroids
   go with them, ON DELETE CASCADE),
4. binary COPY the new token rows, then their centroids (psycopg's ``Copy.set_types`` /
   ``write_row`` frame the fields; halfvec values are encoded by :mod:`pgmaxsim.db.codec`).
   Each row is pooled, quantized and coded (``pgmaxsim.pooling``, ``kernels.quantize``, the
   first stage's codes) as the COPY sends it, so the server stores one row while the next
   is encoded (streaming: on two cores the client's encoding hides behind the server's work).

The whole write is one transaction (a savepoint when the caller already has one open,
e.g. the worker dequeuing in the same transaction), so it is idempotent per id: writing
the same rows twice leaves one copy of each. Run it at READ COMMITTED (the default).
Each written row gets a new ``version`` and a ``maxsim.changes`` entry from the token
table's trigger. ``tokens`` is ONE bytea per row in the index's tier layout (option
``storage``, ``kernels.quantize.encode_tokens``; bench/STORAGE.md), after token pooling
(option ``pool_factor``, ``pooling.pool_tokens``); the pooled vector and centroids are
computed from what is stored (the decoded bytes), so every reader sees one row.

For model-backed indexes: a source row deleted while its embeddings are being computed
must not come back as orphan embeddings. Read the source rows with ``SELECT ... FOR KEY
SHARE`` in the transaction that calls ``write_rows``: a concurrent DELETE then waits for
that commit, and its trigger removes the rows just written.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import itertools
import struct
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.pq import Format

from pgmaxsim import codebook, firststage, pooling
from pgmaxsim.db.codec import CodecError, encode_halfvec, fits_fp16
from pgmaxsim.encoders.layout import Layout, encode_layout
from pgmaxsim.errors import PgmaxsimError
from pgmaxsim.kernels import quantize
from pgmaxsim.registry import IndexSpec, get_index

#: Binary COPY column types of the key: PostgreSQL's binary format of these; any other key
#: type (text, varchar, citext, ...) takes the text's bytes, as its binary input does.
_KEY_COPY_TYPES = {"smallint": "int2", "integer": "int4", "bigint": "int8", "uuid": "uuid"}
TOKEN_COLUMNS = ("id", "tokens", "n_tokens", "n_raw_tokens", "pooled", "model", "model_revision", "content_hash",
                 "layout")
CENTROID_COLUMNS = ("row_id", "c", "vec")
_INT4_OID, _INT4_ARRAY_OID = 23, 1007


def row_lock_key(index_id: int, row_id: str) -> int:
    """The advisory-lock key of row ``row_id`` (its key as ``id::text``) of index ``index_id``.

    Writers (``write_rows``, ``maxsim._upsert``) and workers (claiming a row to encode)
    take ``pg_advisory_xact_lock(key)`` / ``pg_try_advisory_xact_lock(key)`` on it, so a
    row is written by one transaction at a time. It must equal the SQL expression::

        ('x' || pg_catalog.left(pg_catalog.md5('pgmaxsim/' || index_id::text || '/' || row_id), 16))
            ::bit(64)::bigint

    which is ``maxsim._row_lock_key(index_id, row_id)`` (sql/idempotent/050_write.sql)
    (the first 8 bytes of the MD5, as a signed big-endian bigint; the prefix keeps the
    keys apart from other applications' advisory locks).

    >>> row_lock_key(1, "42")
    -1293749179907398762
    """
    digest = hashlib.md5(f"pgmaxsim/{index_id}/{row_id}".encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


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


def _check_tokens(index: IndexSpec, key: str, emb: Any) -> np.ndarray:
    """``emb`` checked, as an array. Every tier refuses what fp16 cannot hold (NaN, infinities,
    magnitudes from 65,520 up), whatever it stores, and the check does not depend on the tier: a
    write encodes its rows again under the tier it finds when it locks the token table (a storage
    switch may have committed since ``index`` was read).

    By :func:`~pgmaxsim.db.codec.fits_fp16`, not by converting to fp16 and testing that:
    validation runs before the COPY starts, where nothing overlaps it; the fp16 tier's conversion
    is made as the row is encoded, which the COPY overlaps."""
    arr = np.asarray(emb)
    if arr.ndim != 2:
        raise PgmaxsimError(f"row {key}: embeddings must be a 2-D (n_tokens, dim) array, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise PgmaxsimError(f"row {key}: embeddings are empty (a row needs at least one token vector)")
    if arr.shape[1] != index.dim:
        raise PgmaxsimError(f"row {key}: embeddings have {arr.shape[1]} dimensions, index {index.name!r} has {index.dim}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise PgmaxsimError(f"row {key}: embeddings must be real numbers, got dtype {arr.dtype}")
    if not fits_fp16(arr):
        raise PgmaxsimError(f"row {key}: token embeddings contain NaN or infinite values"
                            " (or values beyond fp16 range)")
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
    layouts: Sequence[Layout | None] | None = None,
) -> int:
    """Write (insert or replace) the token embeddings of rows ``ids``; returns rows written.

    ``embeddings[i]`` is an ``(n_i, dim)`` float array for ``ids[i]``. A key given twice
    keeps its last embeddings. ``layouts[i]``: where row i's tokens came from
    (:mod:`pgmaxsim.encoders.layout`, one entry per token; kept only for rows stored without
    token pooling). Raises PgmaxsimError for bad input before writing anything.
    """
    if len(ids) != len(embeddings):
        raise PgmaxsimError(f"{len(ids)} ids but {len(embeddings)} embeddings")
    if content_hashes is not None and len(content_hashes) != len(ids):
        raise PgmaxsimError(f"{len(ids)} ids but {len(content_hashes)} content hashes")
    if layouts is not None and len(layouts) != len(ids):
        raise PgmaxsimError(f"{len(ids)} ids but {len(layouts)} layouts")
    latest: dict[str, int] = {}
    for i, key in enumerate(ids):
        latest[index.key_text(key)] = i
    if not latest:
        return 0
    checked = {key: _check_tokens(index, key, embeddings[i]) for key, i in latest.items()}
    if layouts is not None:
        for key, i in latest.items():
            _layout_bytes(key, layouts[i], len(checked[key]))

    def encode(spec: IndexSpec) -> tuple[Iterator[tuple[Any, ...]], list[tuple[Any, ...]]]:
        # rows are encoded as the COPY sends them (the server stores one row while the next is
        # encoded here: two cores busy instead of one, then the other); nothing below queries conn
        book = codebook.live(conn, spec)
        cen_rows: list[tuple[Any, ...]] = []
        return _stream_rows(spec, latest, checked, content_hashes, model, model_revision, layouts, book,
                            cen_rows), cen_rows

    keys = list(latest)
    _write(conn, index, keys, encode)
    codebook.mark_due(conn, index)   # past its threshold: training due (the worker or train_first_stage trains it)
    return len(keys)


def encode_rows(index: IndexSpec, latest: dict[str, int], embeddings: Sequence[Any],
                content_hashes: Sequence[bytes | None] | None, model: str | None,
                model_revision: str | None, layouts: Sequence[Layout | None] | None = None,
                book: codebook.Live | None = None,
                ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The COPY rows (:func:`token_columns`, :data:`CENTROID_COLUMNS`) of ``embeddings``
    by key text (``latest``: key -> position); halfvec values already in their binary form;
    with ``book`` (a codebook index's live codebook) each token row ends with its codes."""
    checked = {key: _check_tokens(index, key, embeddings[i]) for key, i in latest.items()}
    cen_rows: list[tuple[Any, ...]] = []
    tok_rows = list(_stream_rows(index, latest, checked, content_hashes, model, model_revision, layouts, book,
                                 cen_rows))
    return tok_rows, cen_rows


def _stream_rows(index: IndexSpec, latest: dict[str, int], checked: dict[str, np.ndarray],
                 content_hashes: Sequence[bytes | None] | None, model: str | None, model_revision: str | None,
                 layouts: Sequence[Layout | None] | None, book: codebook.Live | None,
                 cen_rows: list[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """Token rows of :func:`encode_rows`, one at a time (``checked``: :func:`_check_tokens` of each
    key); each row's centroid rows are appended to ``cen_rows`` as it is made.

    With a codebook, rows go in chunks of :func:`chunk_tokens` stored tokens (one assign call):
    the chunks' codes are assigned on :data:`CODERS` helper threads (NumPy's GEMMs release the GIL)
    while this thread encodes the next chunk and the COPY sends the oldest, so the assignment (the
    write path's largest client cost, ~3 ms per 1,000-token page) runs on cores the client would
    otherwise leave to the server alone."""
    storage, factor = index.storage, index.pool_factor

    def encoded(key: str, i: int) -> tuple[tuple[Any, ...], np.ndarray, np.ndarray | None]:
        arr = checked[key]
        if storage == "fp16" and factor == 1:   # the common case: the bytes are the fp16 values
            half = np.ascontiguousarray(arr, dtype="<f2")
            blob, stored = half.tobytes(), half.astype(np.float32)
        else:
            blob = quantize.encode_tokens(pooling.pool_tokens(arr, factor) if factor > 1 else arr, storage)
            stored = quantize.dequantize(*quantize.decode_tokens(blob, index.dim, storage))
        try:
            pooled, cents = pooling.pool(stored, index.pooling, index.options)
            pooled_bin = encode_halfvec(pooled)
        except CodecError as e:
            raise PgmaxsimError(f"row {key}: {e}") from None
        h = None if content_hashes is None else content_hashes[i]
        lay = None if layouts is None or len(stored) != len(arr) else _layout_bytes(key, layouts[i], len(arr))
        return ((index.key_value(key), blob, len(stored), len(arr), pooled_bin, model, model_revision,
                 None if h is None else bytes(h), lay), stored, cents)

    def sent(row: tuple[Any, ...], cents: np.ndarray | None) -> tuple[Any, ...]:
        if cents is not None:
            cen_rows.extend((row[0], c, encode_halfvec(vec)) for c, vec in enumerate(cents))
        return row

    with _one_blas_thread():
        if book is None:
            for key, i in latest.items():
                row, _, cents = encoded(key, i)
                yield sent(row, cents)
            return
        with concurrent.futures.ThreadPoolExecutor(CODERS, thread_name_prefix="pgmaxsim-codes") as helper:
            queued: collections.deque[tuple[list[tuple[Any, ...]], concurrent.futures.Future[list[bytes]]]] = \
                collections.deque()
            items = iter(latest.items())
            per_chunk = chunk_tokens(sum(len(checked[key]) for key in latest) // max(factor, 1))
            while done := firststage.take_tokens((encoded(key, i) for key, i in items), per_chunk,
                                                 lambda enc: len(enc[1])):   # its stored tokens
                rows = [sent(row, cents) for row, _, cents in done]
                queued.append((rows, helper.submit(_chunk_codes, book, [stored for _, stored, _ in done])))
                if len(queued) > CODERS:   # the oldest chunk goes while the newer ones are coded
                    yield from _with_codes(*queued.popleft())
            while queued:
                yield from _with_codes(*queued.popleft())


#: Threads assigning a write's codes, each a chunk at a time (NumPy's GEMMs release the GIL). With
#: one, the writer waited on it ~30 % of a write (py-spy, a 10K-page index's codebook): coding a page
#: (~3.5 ms) outlasts quantizing and sending it. Two: 0.49 -> 0.53x bare COPY there (three runs each),
#: 0.82 -> 0.91 at 600 pages' codebook (bench/STORAGE.md section 11).
CODERS = 2

#: Fewest stored tokens a chunk of a write's rows is coded in: ~8 pages (a cell's GEMM at 181 cells
#: then has ~45 rows); a write is cut into up to 4 chunks, each at most ``firststage.ASSIGN_TOKENS``.
CHUNK_MIN_TOKENS = 8_192


def chunk_tokens(total: int) -> int:
    """Stored tokens a chunk of a write of ``total`` tokens should hold: a quarter of the write,
    within [CHUNK_MIN_TOKENS, firststage.ASSIGN_TOKENS]. Why not one size: a chunk's codes are
    assigned while the COPY sends the previous chunk, so a write in one chunk codes and then
    sends, one core idle each time (32-page writes in one chunk went 0.42-0.50x bare COPY, in
    8-page chunks 0.48-0.52: bench/STORAGE.md section 11); larger chunks make the cells' GEMMs
    faster (32 pages coded ~20 % faster a page than 8), which a large write can afford.

    >>> chunk_tokens(32_000), chunk_tokens(64_000), chunk_tokens(10_000_000)
    (8192, 16000, 32768)
    """
    return min(firststage.ASSIGN_TOKENS, max(CHUNK_MIN_TOKENS, total // 4))


def _chunk_codes(book: codebook.Live, stored: list[np.ndarray]) -> list[bytes]:
    """Each row's distinct codes (sorted) under ``book`` as a binary ``int4[]``, assigned in one call."""
    return [_int4_array(c) for c in firststage.distinct_codes(book.cb, stored)]


def _with_codes(rows: list[tuple[Any, ...]], codes: concurrent.futures.Future[list[bytes]]) -> Iterator[tuple[Any, ...]]:
    for row, c in zip(rows, codes.result()):
        yield row + (c,)


def _layout_bytes(key: str, layout: Layout | None, n_tokens: int) -> bytes | None:
    """The stored form of a row's layout, which must describe each of its ``n_tokens`` tokens."""
    if layout is None:
        return None
    if layout.n_tokens != n_tokens:
        raise PgmaxsimError(f"row {key}: layout describes {layout.n_tokens} tokens, the row has {n_tokens}")
    return encode_layout(layout)


def _encoded(type_oid: int) -> type[Dumper]:
    """A binary dumper for a value already in ``type_oid``'s binary format (halfvec, halfvec[])."""

    class Encoded(Dumper):
        format = Format.BINARY
        oid = type_oid

        def dump(self, obj: bytes) -> bytes:
            return obj

    return Encoded


def _int4_array(values: Sequence[int] | np.ndarray) -> bytes:
    """PostgreSQL's binary ``int4[]`` (one dimension, no NULLs) of ``values``, built by NumPy:
    psycopg's list dumper costs ~0.4 ms per row of ~1,000 codes (a third of a page's encoding).

    >>> _int4_array([7, -1]).hex()
    '0000000100000000000000170000000200000001000000040000000700000004ffffffff'
    >>> _int4_array([]).hex()
    '000000000000000000000017'
    """
    v = np.asarray(values, dtype=np.int64)
    if v.size == 0:
        return struct.pack(">3i", 0, 0, _INT4_OID)
    body = np.empty((v.size, 2), dtype=">i4")
    body[:, 0] = 4          # each element: its length, then its value
    body[:, 1] = v
    return struct.pack(">5i", 1, 0, _INT4_OID, v.size, 1) + body.tobytes()


class _Int4ArrayDumper(Dumper):
    """Binary ``int4[]`` COPY field: bytes already in that form pass through, lists are encoded."""

    format = Format.BINARY
    oid = _INT4_ARRAY_OID

    def dump(self, obj: Any) -> bytes:
        return obj if isinstance(obj, (bytes, bytearray)) else _int4_array(obj)


def token_columns(rows: list[tuple[Any, ...]], book: codebook.Live | None) -> tuple[str, ...]:
    """The token table's COPY columns of ``rows``: :data:`TOKEN_COLUMNS`, then the live codes
    column when the rows carry codes (:func:`encode_rows` with a codebook)."""
    if book is not None and rows and len(rows[0]) > len(TOKEN_COLUMNS):
        return TOKEN_COLUMNS + (codebook.column(book.slot),)
    return TOKEN_COLUMNS


def copy_types(cur: psycopg.Cursor[Any], index: IndexSpec) -> tuple[list[int | str], list[int | str]]:
    """The ``Copy.set_types`` of :data:`TOKEN_COLUMNS` (+ codes, ``int4[]``) and
    :data:`CENTROID_COLUMNS` for ``index``, registering the pass-through dumpers of the
    halfvec types on ``cur``."""
    for oid in (index.halfvec_oid, index.halfvec_array_oid):
        cur.adapters.register_dumper(None, _encoded(oid))
    cur.adapters.register_dumper(None, _Int4ArrayDumper)
    key = _KEY_COPY_TYPES.get(index.id_type, "text")
    return ([key, "bytea", "int4", "int4", index.halfvec_oid, "text", "text", "bytea", "bytea", "int4[]"],
            [key, "int2", index.halfvec_oid])


def _write(conn: psycopg.Connection[Any], index: IndexSpec, keys: list[str], encode: Any,
           book: codebook.Live | None = None) -> None:
    """Write the rows ``encode(index)`` makes; ``book``: the codebook their codes are under when it
    is not ``index``'s own (a storage switch codes its shadow's rows under the index's codebook)."""
    tok_rows, cen_rows = encode(index)
    with conn.transaction(), conn.cursor() as cur:
        lock_rows(cur, index, keys)
        if _may_insert(cur, index):
            # The token table first, then the registry again: a storage switch (pgmaxsim.retier)
            # or a first-stage retrain (pgmaxsim.codebook) holds the table until it has swapped
            # tables and options, so rows encoded under the tier or codebook read before it are
            # encoded again under the ones of the table written.
            cur.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(index.token_ident()))
        # (a granted role cannot lock it: a switch that commits meanwhile leaves its rows without
        # codes in the new slot, which keeps them candidates until the next retrain)
        fresh = get_index(conn, index.name)
        if _encoding(fresh) != _encoding(index):
            index = fresh
            tok_rows, cen_rows = encode(index)
        tok_types, cen_types = copy_types(cur, index)
        rows = iter(tok_rows)   # a list, or rows encoded as the COPY consumes them (write_rows)
        first = next(rows, None)
        columns = token_columns([] if first is None else [first], book or codebook.live(conn, index))
        tok_rows = rows if first is None else itertools.chain([first], rows)
        tok_types = tok_types[:len(columns)]
        if _may_insert(cur, index):
            delete_keys(cur, index, keys)
            _copy(cur, index.token_ident(), columns, tok_types, tok_rows)
            if cen_rows and index.centroid_table:
                _copy(cur, sql.Identifier("maxsim", index.centroid_table), CENTROID_COLUMNS, cen_types, cen_rows)
            return
        # A granted role that manages the index (not the schema owner): the same COPY into stage
        # tables the schema owner made for this transaction, then moved in (sql/idempotent/050_write.sql).
        tok_stage, cen_stage = cur.execute("SELECT maxsim.write_stage(%s)", (index.name,)).fetchone()[0]
        _copy(cur, sql.Identifier("pg_temp", tok_stage), columns, tok_types, tok_rows)
        if cen_rows and cen_stage:
            _copy(cur, sql.Identifier("pg_temp", cen_stage), CENTROID_COLUMNS, cen_types, cen_rows)
        cur.execute("SELECT maxsim.write_commit(%s, %s)", (index.name, [tok_stage, cen_stage]))


def _encoding(index: IndexSpec) -> tuple[Any, ...]:
    """What the encoded rows depend on: tier, pool factor, first stage and its codebook generation."""
    return (index.storage, index.pool_factor, index.pooling, codebook.gen_of(index))


#: _may_insert's answers per connection, by index, token table and who the session is (its user and
#: is_superuser, which SET ROLE changes): no write path grants or revokes rights on pgmaxsim's tables.
_INSERT_RIGHTS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], bool]] = weakref.WeakKeyDictionary()


def _may_insert(cur: psycopg.Cursor[Any], index: IndexSpec) -> bool:
    """Whether this session may write the token table itself (the schema owner, a superuser);
    asked once per connection and index (a reindex's new token table is asked again)."""
    known = _INSERT_RIGHTS.setdefault(cur.connection, {})
    info = cur.connection.info
    key = (index.id, index.token_table, info.parameter_status("session_authorization"),
           info.parameter_status("is_superuser"))
    if key not in known:
        row = cur.execute("SELECT pg_catalog.has_table_privilege(%s, 'INSERT')",
                          (index.token_ident().as_string(cur),)).fetchone()
        known[key] = bool(row and row[0])
    return known[key]


def lock_rows(cur: psycopg.Cursor[Any] | psycopg.Connection[Any], index: IndexSpec, keys: Sequence[str]) -> None:
    """Wait for the row locks (:func:`row_lock_key`) of ``keys``, in key order (no deadlocks)."""
    locks = sorted({row_lock_key(index.id, k) for k in keys})
    cur.execute("SELECT pg_catalog.pg_advisory_xact_lock(k) FROM pg_catalog.unnest(%s::bigint[]) AS u(k)", (locks,))


def _copy(cur: psycopg.Cursor[Any], table: sql.Composable, columns: Sequence[str], types: list[int | str],
          rows: Iterable[tuple[Any, ...]]) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        table, sql.SQL(", ").join(map(sql.Identifier, columns)))
    with cur.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def delete_keys(cur: psycopg.Cursor[Any] | psycopg.Connection[Any], index: IndexSpec, keys: Sequence[str]) -> int:
    """THE delete of embeddings: the token rows of ``keys`` (``id::text`` forms; centroids go
    with them, ON DELETE CASCADE), through ``maxsim.delete`` (the SQL entry point, so Python and
    SQL callers share one path and one rights check). Keys not in the index are ignored;
    returns rows removed."""
    if not keys:
        return 0
    row = cur.execute("SELECT maxsim.delete(%s, %s::text[])", (index.name, list(keys))).fetchone()
    return int(row[0]) if row else 0


def delete_rows(conn: psycopg.Connection[Any], index: IndexSpec, ids: Sequence[Any]) -> int:
    """Remove rows' embeddings by their Python keys (ids not in the index are ignored); returns rows removed."""
    return delete_keys(conn, index, [index.key_text(k) for k in ids])

"""Entry points of the PL/Python functions (sql/0002_scoring_plpython.sql).

Every function takes the ``plpy`` module of the calling backend first. Token
arrays arrive as ``array_send`` blobs (bytea) and are fetched from token tables
the same way, in chunks, so nothing is ever parsed from vector text. Scores for
the ids a scorer service holds come from it (:mod:`.remote`); the rest are
computed here with NumPy (:mod:`.cpu`).
"""

from __future__ import annotations

import json
import time
from typing import Any, NoReturn

import numpy as np

from pgmaxsim import pooling
from pgmaxsim.db.codec import CodecError
from pgmaxsim.kernels import quantize
from pgmaxsim.plpy import remote, scoring
from pgmaxsim.plpy.plans import kept as _plan
from pgmaxsim.plpy.tokens import decode_query, row_words

# Rows fetched per round trip when scoring: bounds backend memory (~128 × 264 KB for
# 1,000-token d=128 pages) while keeping the matrix product large enough to be efficient.
FETCH_ROWS = 128
# PostgreSQL can cancel a PL/Python function only between its SPI calls (each fetch), never
# inside a NumPy product: batches shrink as queries grow so that one batch stays around a
# tenth of a second (~4,096 query-token × row products per batch), and statement_timeout or
# pg_cancel_backend take effect promptly even for a 512-token exhaustive search.
QUERY_TOKEN_ROWS = 4096


def fetch_rows(n_query_tokens: int) -> int:
    """Rows per fetch for a query of ``n_query_tokens``.

    >>> fetch_rows(24), fetch_rows(512), fetch_rows(10_000)
    (128, 8, 1)
    """
    return max(1, min(FETCH_ROWS, QUERY_TOKEN_ROWS // max(1, n_query_tokens)))

def _fail(plpy: Any, message: str, sqlstate: str = "22023") -> NoReturn:
    plpy.error("pgmaxsim: " + message, sqlstate=sqlstate)  # raises
    raise AssertionError("unreachable")


def index_by_id(plpy: Any, index_id: int) -> dict[str, Any]:
    rows = plpy.execute(_plan(
        plpy,
        "SELECT i.id, i.name, i.token_table, i.dim, i.id_type::text AS id_type, i.pooling,"
        " i.options::text AS options FROM maxsim.indexes i WHERE i.id = $1",
        ["integer"]), [index_id])
    if not rows:
        _fail(plpy, f"index with id {index_id} does not exist", "42704")
    index = dict(rows[0])
    index["options"] = json.loads(index["options"])
    return index


def _decode(plpy: Any, blob: bytes, what: str) -> np.ndarray:
    try:
        arr = decode_query(blob)
    except CodecError as e:
        _fail(plpy, f"{what}: {e}")
    return arr


def _query(plpy: Any, blob: bytes | None, dim: int | None) -> np.ndarray:
    if blob is None:
        _fail(plpy, "query is NULL", "22004")
    q = _decode(plpy, blob, "query")
    if q.shape[0] == 0:
        _fail(plpy, "query is empty (it needs at least one token vector)")
    if dim is not None and q.shape[1] != dim:
        _fail(plpy, f"query vectors have {q.shape[1]} dimensions, the index has {dim}", "22000")
    return q


def _ranked(scores: dict[str, float], k: int | None) -> list[tuple[str, float]]:
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return ranked if k is None else ranked[:k]


def storage_of(index: dict[str, Any]) -> str:
    """The index's storage tier (``fp16`` for registries written before option ``storage``)."""
    return str(index["options"].get("storage", "fp16"))


def row_storage(nbytes: int, n_tokens: int, dim: int, default: str) -> str:
    """The tier a stored row's bytes are in, from their length (``default`` when both fit).

    A statement that began before ``pgmaxsim index reindex`` switched tiers reads the
    registry as it was and the token table as it is now: the length decides, not the
    registry. ``fp16`` rows take ``2 * dim`` bytes per token, ``int8`` rows ``dim + 4``.

    >>> row_storage(2 * 128 * 3, 3, 128, "int8"), row_storage(132 * 3, 3, 128, "fp16")
    ('fp16', 'int8')
    """
    fits = [s for s in quantize.STORAGE_TIERS if nbytes == quantize.stored_nbytes(n_tokens, dim, s)]
    return default if len(fits) != 1 else fits[0]


def _score_rows(plpy: Any, index: dict[str, Any], q: np.ndarray, rows: list[Any], out: dict[str, float]) -> None:
    """Score fetched rows ``{id, tokens, n}``: stored bytes, scored as stored (fp16 or int8)."""
    if not rows:
        return
    dim, default = int(index["dim"]), storage_of(index)
    groups: dict[str, list[Any]] = {}
    for r in rows:
        groups.setdefault(row_storage(len(r["tokens"]), int(r["n"]), dim, default), []).append(r)
    for storage, part in groups.items():
        try:
            scores = scoring.maxsim_stored(q, [r["tokens"] for r in part], dim, storage)
        except quantize.StoredTokensError as e:
            _fail(plpy, f"stored tokens of index {index['name']!r} are malformed: {e}", "XX000")
        for r, s in zip(part, scores.tolist()):
            out[r["id"]] = s


def _score_centroid_rows(plpy: Any, index: dict[str, Any], q: np.ndarray, rows: list[Any],
                         out: dict[str, float]) -> None:
    """Score rows ``{id, tokens}`` whose tokens are ``array_send(halfvec[])`` blobs (centroids)."""
    if not rows:
        return
    try:
        parts = [row_words(None, r["tokens"], index["dim"]) for r in rows]
    except CodecError as e:
        _fail(plpy, f"centroids of index {index['name']!r} are malformed: {e}", "XX000")
    for r, s in zip(rows, scoring.maxsim_rows(q, parts).tolist()):
        out[r["id"]] = s


def _fetch_sql(plpy: Any, index: dict[str, Any], where: str) -> str:
    # Identifiers from the registry are quoted even though only the schema owner can write it.
    return (f"SELECT t.id::text AS id, t.tokens AS tokens, t.n_tokens AS n"
            f" FROM maxsim.{plpy.quote_ident(index['token_table'])} t {where}")


class _Timer:
    """Fetch/score time split, reported as a NOTICE when ``SET pgmaxsim.timing = on``."""

    def __init__(self, plpy: Any) -> None:
        rows = plpy.execute(_plan(plpy, "SELECT pg_catalog.current_setting('pgmaxsim.timing', true) AS on"))
        self.on = bool(rows) and rows[0]["on"] in ("on", "true", "1")
        self.fetch = self.score = 0.0
        self.rows = 0
        self.t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt

    def report(self, plpy: Any, remote_rows: int) -> None:
        if self.on:
            plpy.notice(f"pgmaxsim: scored {self.rows} rows on the CPU (fetch {self.fetch * 1e3:.1f} ms,"
                        f" score {self.score * 1e3:.1f} ms), {remote_rows} by the scorer service")


def _score_rows_timed(plpy: Any, index: dict[str, Any], q: np.ndarray, rows: list[Any],
                      out: dict[str, float], timer: _Timer) -> None:
    timer.fetch += timer.lap()
    _score_rows(plpy, index, q, rows, out)
    timer.score += timer.lap()
    timer.rows += len(rows)


def score(plpy: Any, index_id: int, query: bytes, ids: list[str | None] | None, k: int | None) -> list[tuple[str, float]]:
    """Exact MaxSim of rows ``ids`` (text keys; None = every row), best ``k`` first (None = all)."""
    timer = _Timer(plpy)
    index = index_by_id(plpy, index_id)
    q = _query(plpy, query, index["dim"])
    if k is not None and k <= 0:
        _fail(plpy, f"k must be positive, got {k}")
    batch = fetch_rows(q.shape[0])
    scores: dict[str, float] = {}
    if ids is None:
        found = remote.search_all(plpy, index, q, k)
        if found is not None:
            return found
        cursor = plpy.cursor(_plan(plpy, _fetch_sql(plpy, index, "")))
        timer.lap()
        while True:
            rows = cursor.fetch(batch)
            if not rows:
                break
            _score_rows_timed(plpy, index, q, list(rows), scores, timer)
        timer.report(plpy, 0)
        return _ranked(scores, k)
    keys = list(dict.fromkeys(i for i in ids if i is not None))
    if not keys:
        return []
    got = remote.score_ids(plpy, index, q, keys)
    if got:
        scores.update(got)
        keys = [i for i in keys if i not in got]
    plan = _plan(plpy, _fetch_sql(plpy, index, f"WHERE t.id = ANY ($1::{index['id_type']}[])"), ["text[]"])
    timer.lap()
    for start in range(0, len(keys), batch):
        rows = plpy.execute(plan, [keys[start:start + batch]])
        _score_rows_timed(plpy, index, q, list(rows), scores, timer)
    timer.report(plpy, len(got or ()))
    return _ranked(scores, k)


def maxsim(plpy: Any, doc: bytes, query: bytes) -> float | None:
    """Scalar MaxSim of two token arrays (``maxsim.maxsim``); None for an empty document."""
    q = _query(plpy, query, None)
    d = _decode(plpy, doc, "document")
    if d.shape[0] == 0:
        return None
    if d.shape[1] != q.shape[1]:
        _fail(plpy, f"document vectors have {d.shape[1]} dimensions, query vectors {q.shape[1]}", "22000")
    return scoring.maxsim_one(d, q)


def _vector_text(v: np.ndarray) -> str:
    return "[" + ",".join(repr(x) for x in np.asarray(v, dtype=np.float32).tolist()) + "]"


def pool(plpy: Any, tokens: bytes, n_centroids: int) -> list[str]:
    """``{mean, centroid 1..n}`` of one row's tokens, as halfvec text (``maxsim._pool``)."""
    t = _decode(plpy, tokens, "tokens")
    if t.shape[0] == 0:
        _fail(plpy, "tokens are empty (a row needs at least one token vector)")
    out = [_vector_text(pooling.mean_pool(t))]
    if n_centroids > 0:
        out.extend(_vector_text(c) for c in pooling.centroids(t, n_centroids))
    return out


def rescore(plpy: Any, index_id: int, query: bytes, ids: list[str] | None, n: int) -> list[str]:
    """The best ``n`` of rows ``ids`` by centroid interaction (``maxsim._rescore``).

    Each row is scored by MaxSim against its few centroids instead of its tokens: a
    cheap estimate (16 vectors instead of ~1,000) that orders candidates well enough
    to send only the best ``n`` on to exact scoring.
    """
    index = index_by_id(plpy, index_id)
    q = _query(plpy, query, index["dim"])
    keys = list(dict.fromkeys(i for i in ids or () if i is not None))
    if len(keys) <= n:
        return keys
    if index["pooling"] == "codebook":   # the token-level first stage: its codes' centroids
        from pgmaxsim.plpy import codes

        return codes.rescore(plpy, index, q, keys, n)
    plan = _plan(
        plpy,
        f"SELECT c.row_id::text AS id,"
        f" pg_catalog.array_send(pg_catalog.array_agg(c.vec ORDER BY c.c)) AS tokens"
        f" FROM maxsim.cen_{int(index_id)} c WHERE c.row_id = ANY ($1::{index['id_type']}[]) GROUP BY c.row_id",
        ["text[]"])
    scores: dict[str, float] = {}
    _score_centroid_rows(plpy, index, q, list(plpy.execute(plan, [keys])), scores)
    return [i for i, _ in _ranked(scores, n)]


def encode(plpy: Any, tokens: bytes, storage: str, pool_factor: int) -> bytes:
    """One row's ``halfvec[]`` blob -> its stored bytes (``maxsim._encode``): pooled, then in the tier."""
    t = _decode(plpy, tokens, "tokens")
    if t.shape[0] == 0:
        _fail(plpy, "tokens are empty (a row needs at least one token vector)")
    if storage not in quantize.STORAGE_TIERS:
        _fail(plpy, f"unknown storage {storage!r} (expected one of {', '.join(quantize.STORAGE_TIERS)})")
    if pool_factor < 1:
        _fail(plpy, f"pool_factor must be at least 1, got {pool_factor}")
    return quantize.encode_tokens(pooling.pool_tokens(t, pool_factor), storage)


def decode(plpy: Any, blob: bytes, dim: int, storage: str) -> list[str]:
    """Stored bytes -> halfvec text per token (``maxsim._decode``; int8 dequantized)."""
    try:
        tokens, scales = quantize.decode_tokens(blob, dim, storage)
    except (quantize.StoredTokensError, ValueError) as e:
        _fail(plpy, f"stored tokens are malformed: {e}", "XX000")
    return [_vector_text(v) for v in quantize.dequantize(tokens, scales)]

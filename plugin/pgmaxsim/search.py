"""Searching an index from Python: queries through the index's model, filters, source rows.

``pgmaxsim.Index.search`` / ``.rerank`` / ``.cache_query`` are these functions
on the index's connection; the CLI (``pgmaxsim search``) and the demo call them
too, so there is one implementation.

- :func:`search` / :func:`rerank`: ``maxsim.search`` / ``maxsim.rerank`` with a
  query of any kind, an optional filter on the source table and the source rows.
- :func:`encode_query`: a query text, a PIL image (image-to-page search) or an
  ``(n, d)`` array → ``(n, d)`` float32 tokens. Text and images go through the
  index's own model, loaded once per process (:func:`encoder_for`).
- :func:`filter_keys`: the keys of the source rows matching a filter (a SQL
  condition on the source table's columns, or a ``{column: value}`` mapping).
- :func:`fetch_rows`: the source rows of a result, as dicts.
- :class:`Hit`: one result; a 2-tuple ``(id, score)`` with a ``.row`` attribute.
- :func:`borrow`: a connection from a psycopg 3 connection or a pool.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
from psycopg import sql

from pgmaxsim.db.adapters import Tokens, tokens_cursor
from pgmaxsim.db.codec import fits_fp16
from pgmaxsim.errors import SERVER_PREFIX, PgmaxsimError, one_line
from pgmaxsim.registry import IndexSpec, get_index

if TYPE_CHECKING:  # pragma: no cover
    from pgmaxsim.encoders.base import Encoder

Filter = str | sql.Composable | Mapping[str, Any] | None

#: A filter matching at most this many rows is scored exactly over all of them (maxsim.rerank);
#: a broader one searches with more candidates and post-filters.
FILTER_RERANK_LIMIT = 2000

_encoders: dict[tuple[str, str | None], Encoder] = {}
_lock = threading.Lock()


class Hit(tuple):  # type: ignore[type-arg]
    """One search result: unpacks and compares as ``(id, score)``; ``.row`` is the source row when asked."""

    row: dict[str, Any] | None

    def __new__(cls, id: Any, score: float, row: dict[str, Any] | None = None) -> Hit:
        self = super().__new__(cls, (id, score))
        self.row = row
        return self

    @property
    def id(self) -> Any:
        return self[0]

    @property
    def score(self) -> float:
        return float(self[1])

    def __repr__(self) -> str:
        extra = "" if self.row is None else f", row={self.row!r}"
        return f"Hit(id={self[0]!r}, score={self[1]:.4f}{extra})"

    def __reduce__(self) -> Any:
        return (Hit, (self[0], self[1], self.row))


@contextmanager
def borrow(conn: Any) -> Iterator[psycopg.Connection[Any]]:
    """``conn`` itself, or a connection borrowed from a pool (anything with ``.connection()``)."""
    if isinstance(conn, psycopg.Connection):
        yield conn
        return
    getter = getattr(conn, "connection", None)
    if getter is None:
        raise PgmaxsimError(f"expected a psycopg 3 connection or pool, got {type(conn).__name__}")
    with getter() as c:
        yield c


# ---------------------------------------------------------------- query encoding

def encoder_for(model: str, revision: str | None = None) -> Encoder:
    """The encoder of ``model`` (+ ``revision``), loaded once per process."""
    key = (model, revision)
    enc = _encoders.get(key)
    if enc is not None:
        return enc
    with _lock:
        enc = _encoders.get(key)
        if enc is None:
            from pgmaxsim.encoders import load_encoder

            _quiet_transformers()
            enc = load_encoder(model, revision=revision)
            _encoders[key] = enc
    return enc


def _quiet_transformers() -> None:
    """No per-load 'Loading weights' progress bars in the middle of a search's output."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:
        pass


def _is_image(query: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(query, Image.Image)


def encode_query(info: IndexSpec, query: Any, encoder: Encoder | None = None) -> np.ndarray:
    """``query`` as an ``(n, d)`` float array for index ``info`` (see module doc).

    Text and images need the index to have a model (or ``encoder`` given);
    arrays are checked against the index's dim. Raises PgmaxsimError.
    """
    if isinstance(query, str) or _is_image(query):
        if encoder is None:
            if not info.model:
                raise PgmaxsimError(
                    f"index {info.name!r} has no model (its embeddings are written by the application):"
                    " pass the query as an (n_tokens, dim) array of token embeddings, or give Index(..., encoder=...)")
            encoder = encoder_for(info.model, info.model_revision)
        if isinstance(query, str):
            if not query.strip():
                raise PgmaxsimError("the query text is empty")
            tokens = encoder.encode_query(query)
        else:
            out = encoder.encode_documents([query])[0]
            if not isinstance(out, np.ndarray):
                raise PgmaxsimError(f"query image: {out.message}")
            tokens = out
        encoder.check_dim(info.dim, info.name)
        return np.asarray(tokens, dtype=np.float32)
    if isinstance(query, (bytes, bytearray, memoryview)) or not (
            hasattr(query, "__array__") or isinstance(query, (list, tuple))):
        raise PgmaxsimError(
            f"index {info.name!r}: a query is text, a PIL image or an (n_tokens, dim) array, not {type(query).__name__}")
    q = np.asarray(query)
    if q.ndim != 2 or q.shape[0] == 0:
        raise PgmaxsimError(f"query must be a non-empty (n_tokens, dim) array, got shape {q.shape}")
    if q.shape[1] != info.dim:
        raise PgmaxsimError(f"query vectors have {q.shape[1]} dimensions, index {info.name!r} has {info.dim}")
    if not np.issubdtype(q.dtype, np.number) or not fits_fp16(q):
        raise PgmaxsimError("query contains NaN or infinite values (or values beyond fp16 range)")
    return q


# ---------------------------------------------------------------- filters and rows

def _source(info: IndexSpec) -> tuple[sql.Composable, sql.Composable, sql.Composable]:
    if not info.source or not info.id_column:
        raise PgmaxsimError(f"index {info.name!r} has no source table")
    # source is regclass output and id_type format_type output: both already quoted by the server.
    return sql.SQL(info.source), sql.Identifier(info.id_column), sql.SQL(info.id_type)


def filter_condition(filter: Filter) -> tuple[sql.Composable, Sequence[Any] | Mapping[str, Any] | None]:
    """A filter as ``(SQL condition, its parameters)``; a mapping becomes ``col = value`` terms.

    A string is SQL written by the caller (like SQLAlchemy's ``text()``): it may
    use the source table's columns and ``%s`` / ``%(name)s`` placeholders.
    Mapping values that are lists or tuples match any of their elements.
    """
    if filter is None:
        return sql.SQL("true"), None
    if isinstance(filter, Mapping):
        if not filter:
            return sql.SQL("true"), None
        terms, params = [], []
        for col, value in filter.items():
            if isinstance(value, (list, tuple, set, frozenset)):
                terms.append(sql.SQL("{} = ANY(%s)").format(sql.Identifier(col)))
                params.append(list(value))
            elif value is None:
                terms.append(sql.SQL("{} IS NULL").format(sql.Identifier(col)))
            else:
                terms.append(sql.SQL("{} = %s").format(sql.Identifier(col)))
                params.append(value)
        return sql.SQL(" AND ").join(terms), params
    if isinstance(filter, str):
        if not filter.strip():
            raise PgmaxsimError("the filter is empty")
        return sql.SQL(filter), None  # type: ignore[arg-type]
    if isinstance(filter, sql.Composable):
        return filter, None
    raise PgmaxsimError(f"filter must be SQL text or a mapping of column to value, not {type(filter).__name__}")


def _run(conn: psycopg.Connection[Any], query: sql.Composable, params: Any) -> list[tuple[Any, ...]]:
    try:
        with conn.transaction():
            return conn.execute(query, params).fetchall()
    except psycopg.Error as e:
        raise PgmaxsimError(f"filter: {one_line(e)}") from None


def filter_keys(conn: psycopg.Connection[Any], info: IndexSpec, filter: Filter, params: Any = None,
                limit: int | None = None) -> list[str] | None:
    """Keys (as text) of the source rows matching ``filter``; None when more than ``limit`` match."""
    src, key, _ = _source(info)
    cond, own = filter_condition(filter)
    q = sql.SQL("SELECT {key}::text FROM {src} WHERE ({cond})").format(key=key, src=src, cond=cond)
    if limit is not None:
        q = q + sql.SQL(" LIMIT {}").format(sql.Literal(limit + 1))
    rows = _run(conn, q, own if own is not None else params)
    if limit is not None and len(rows) > limit:
        return None
    return [r[0] for r in rows]


def keep_matching(conn: psycopg.Connection[Any], info: IndexSpec, keys: Sequence[str], filter: Filter,
                  params: Any = None) -> set[str]:
    """The subset of ``keys`` whose source rows match ``filter``."""
    if not keys:
        return set()
    src, key, typ = _source(info)
    cond, own = filter_condition(filter)
    q = sql.SQL("SELECT {key}::text FROM {src} WHERE {key} = ANY({keys}::text[]::{typ}[]) AND ({cond})").format(
        key=key, src=src, keys=sql.Literal(list(keys)), typ=typ, cond=cond)
    return {r[0] for r in _run(conn, q, own if own is not None else params)}


def fetch_rows(conn: psycopg.Connection[Any], info: IndexSpec, keys: Sequence[str],
               columns: bool | Sequence[str] = True) -> dict[str, dict[str, Any]]:
    """Source rows by key text: all columns (``columns=True``) or the named ones."""
    if not keys:
        return {}
    src, key, typ = _source(info)
    if columns is True:
        cols: sql.Composable = sql.SQL("t.*")
    else:
        names = list(columns)  # type: ignore[arg-type]
        if not names:
            raise PgmaxsimError("rows=[] names no columns")
        cols = sql.SQL(", ").join(sql.SQL("t.") + sql.Identifier(c) for c in names)
    q = sql.SQL("SELECT t.{key}::text AS \"pgmaxsim key\", {cols} FROM {src} t"
                " WHERE t.{key} = ANY(%s::text[]::{typ}[])").format(key=key, cols=cols, src=src, typ=typ)
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(q, (list(keys),))
            names = [d.name for d in cur.description or []]
            out = {}
            for r in cur.fetchall():
                out[r[0]] = dict(zip(names[1:], r[1:]))
    except psycopg.Error as e:
        raise PgmaxsimError(f"reading rows of {info.source}: {one_line(e)}") from None
    return out


# ---------------------------------------------------------------- search

def _cursor(conn: psycopg.Connection[Any], info: IndexSpec) -> psycopg.Cursor[Any]:
    """A cursor that sends :class:`Tokens` as binary ``halfvec[]`` (the one codec); the
    connection's own adapters are left alone."""
    return tokens_cursor(conn, info.halfvec_oid, what="query")


def _fetch(conn: psycopg.Connection[Any], info: IndexSpec, query: str, params: Sequence[Any]) -> list[Any]:
    try:
        with _cursor(conn, info) as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description is not None else []
    except psycopg.Error as e:
        raise PgmaxsimError(one_line(e)) from None


class PendingRowsWarning(UserWarning):
    """The searched index has rows queued for its worker: they are not searched until embedded."""


@contextmanager
def _pending_rows_warned(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Turn maxsim.search's NOTICE about queued rows into a PendingRowsWarning (a NOTICE alone is
    invisible to Python callers, who would get fewer rows than they expect, silently)."""
    seen: list[str] = []

    def handler(d: psycopg.errors.Diagnostic) -> None:
        msg = d.message_primary or ""
        if "not embedded yet" in msg:
            seen.append(msg.removeprefix(SERVER_PREFIX))

    conn.add_notice_handler(handler)
    try:
        yield
    finally:
        conn.remove_notice_handler(handler)
    for msg in seen[:1]:
        warnings.warn(msg, PendingRowsWarning, stacklevel=4)


def _index(conn: psycopg.Connection[Any], name: str, info: IndexSpec | None) -> IndexSpec:
    return info if info is not None else get_index(conn, name)


def _hits(conn: psycopg.Connection[Any], info: IndexSpec, pairs: list[tuple[str, float]],
          rows: bool | Sequence[str]) -> list[Hit]:
    row_of = fetch_rows(conn, info, [key for key, _ in pairs], rows) if rows else {}
    return [Hit(info.key_from_text(key), score, row_of.get(key) if rows else None) for key, score in pairs]


def search(conn: psycopg.Connection[Any], name: str, query: Any, k: int = 10, candidates: int | None = None, *,
           filter: Filter = None, params: Any = None, rows: bool | Sequence[str] = False,
           encoder: Encoder | None = None, filter_rerank_limit: int = FILTER_RERANK_LIMIT,
           info: IndexSpec | None = None, score_here: bool = False) -> list[Hit]:
    """Top-``k`` rows of index ``name`` by MaxSim, best first.

    ``query``: text or a PIL image (encoded by the index's model, or ``encoder``)
    or an ``(n, d)`` token array. ``candidates``: rows passed from the ANN
    prefilter to exact scoring (None: the index's default; >= the row count:
    exact). ``filter``: only source rows matching it (SQL text on the source
    table's columns, ``params`` filling its placeholders, or ``{column: value}``):
    when at most ``filter_rerank_limit`` rows match, all of them are scored
    exactly (``maxsim.rerank``); a broader filter searches deeper and
    post-filters. ``rows``: attach each source row as ``hit.row`` (True: every
    column; or a list of column names). ``score_here``: score maxsim.search's candidates in
    this process (:mod:`pgmaxsim.search_here`; for servers without plpython3u, same results).
    """
    if k <= 0:
        raise PgmaxsimError(f"k must be positive, got {k}")
    info = _index(conn, name, info)
    q = encode_query(info, query, encoder)
    with _pending_rows_warned(conn):
        if filter is None:
            pairs = _search_pairs(conn, info, q, k, candidates, score_here)
        else:
            pairs = _filtered_pairs(conn, info, q, k, candidates, filter, params, filter_rerank_limit, score_here)
    return _hits(conn, info, pairs, rows)


def rerank(conn: psycopg.Connection[Any], name: str, query: Any, ids: Sequence[Any], k: int | None = None, *,
           rows: bool | Sequence[str] = False, encoder: Encoder | None = None,
           info: IndexSpec | None = None) -> list[Hit]:
    """Exact MaxSim of the rows ``ids`` (ids not in the index are ignored), best first."""
    info = _index(conn, name, info)
    q = encode_query(info, query, encoder)
    return _hits(conn, info, _rerank_pairs(conn, info, q, [info.key_text(i) for i in ids], k), rows)


def cache_query(conn: psycopg.Connection[Any], name: str, text: str, *, encoder: Encoder | None = None,
                info: IndexSpec | None = None) -> np.ndarray:
    """Encode ``text`` here and store it in ``maxsim.query_cache`` so that ``maxsim.encode_query(name,
    text)`` answers it in SQL without the scorer service. Returns the tokens."""
    info = _index(conn, name, info)
    tokens = encode_query(info, text, encoder)
    _fetch(conn, info, "SELECT maxsim.cache_query(%s, %s, %s)", (info.name, text, Tokens(tokens)))
    return tokens


def _search_pairs(conn: psycopg.Connection[Any], info: IndexSpec, q: np.ndarray, k: int,
                  candidates: int | None, here: bool = False) -> list[tuple[str, float]]:
    if here:
        from pgmaxsim.search_here import search_pairs

        return search_pairs(conn, info, q, k, candidates)
    rows = _fetch(conn, info, "SELECT id, score FROM maxsim.search(%s, %s, %s, %s)",
                  (info.name, Tokens(q), k, candidates))
    return [(i, float(s)) for i, s in rows]


def _rerank_pairs(conn: psycopg.Connection[Any], info: IndexSpec, q: np.ndarray, keys: list[str],
                  k: int | None) -> list[tuple[str, float]]:
    rows = _fetch(conn, info, "SELECT id, score FROM maxsim.rerank(%s, %s, %s::text[], %s)",
                  (info.name, Tokens(q), keys, k))
    return [(i, float(s)) for i, s in rows]


def _filtered_pairs(conn: psycopg.Connection[Any], info: IndexSpec, q: np.ndarray, k: int,
                    candidates: int | None, filter: Filter, params: Any, limit: int,
                    here: bool = False) -> list[tuple[str, float]]:
    keys = filter_keys(conn, info, filter, params, limit=limit)
    if keys is not None:  # few enough: exact over every matching row
        return _rerank_pairs(conn, info, q, keys, k) if keys else []
    # A broad filter: search deeper until k matching rows are found (or every row was seen).
    total = int(_fetch(conn, info, "SELECT rows FROM maxsim.index_info(%s)", (info.name,))[0][0])
    want = k * 4
    while True:
        cand = max(candidates or info.candidates, want)
        found = _search_pairs(conn, info, q, want, cand, here)
        ok = keep_matching(conn, info, [key for key, _ in found], filter, params)
        kept = [(key, s) for key, s in found if key in ok]
        if len(kept) >= k or want >= total or len(found) < want:
            return kept[:k]
        want = min(total, want * 4)

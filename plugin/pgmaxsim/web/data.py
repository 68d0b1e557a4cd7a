"""What the web page reads, each as one short function over a read-only connection.

The page searches through the same functions as the CLI and the Python API
(:mod:`pgmaxsim.search`), so what it ranks is what ``maxsim.search`` ranks for its
role. It adds two things of its own:

- the stage timings of one search (:class:`Timings`): query encoding and row fetching
  timed here, the ANN prefilter and the centroid rescoring timed by ``maxsim.search``
  itself (``pgmaxsim.timing``: its NOTICEs), exact scoring as the rest of that statement;
- the source rows without their bytea columns (a page image is fetched on its own
  request, so a results page does not carry ten PNGs through the database connection).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from pgmaxsim import search as pgsearch
from pgmaxsim.errors import PgmaxsimError
from pgmaxsim.registry import IndexSpec, get_index
from pgmaxsim.web.db import BadRequest, NotFound

_CANDIDATES = re.compile(r"candidates (all rows|\d+) \(([\d.]+) ms, pooling ([^)]*)\)")
_RESCORED = re.compile(r"rescored to (\d+) by centroid interaction \(([\d.]+) ms\)")
_SCORED = re.compile(r"scored (\d+) rows on the CPU \(fetch ([\d.]+) ms, score ([\d.]+) ms\), (\d+) by the scorer")
_encode_lock = threading.Lock()  # one encode at a time: the model is shared by the handler threads
#: Encoded queries kept (least recently used dropped first): a page's thumbnails reuse its query.
ENCODED_KEPT = 64
_threads_set = False
_encoded: dict[tuple[Any, ...], np.ndarray] = {}


@dataclass
class Stage:
    name: str
    ms: float | None  # None: the stage did not run for this search
    note: str = ""


@dataclass
class Timings:
    """Where one search's time went, in order; ``server_timing`` is the HTTP header's value."""

    stages: list[Stage] = field(default_factory=list)

    def add(self, name: str, ms: float | None, note: str = "") -> None:
        self.stages.append(Stage(name, ms, note))

    def server_timing(self) -> str:
        return ", ".join(f"{s.name.split()[0].lower()};dur={s.ms:.1f}" for s in self.stages if s.ms is not None)


@dataclass
class Columns:
    """The source table's columns the role may read: shown ones, and where a page image is."""

    shown: list[str]
    image: str | None
    mime: str | None


@dataclass
class Result:
    rank: int
    key: str  # the row key as text (URLs)
    score: float
    row: dict[str, Any]
    has_image: bool
    label: str = ""                   # what names the row (title and page, ...)
    body: str = ""                    # its text, for the snippet


@dataclass
class Found:
    results: list[Result]
    timings: Timings
    pending: str | None  # maxsim.search's notice about queued rows not searched yet
    tokens: np.ndarray   # the encoded query (explanations reuse it)


# ---------------------------------------------------------------- indexes

def index_names(conn: psycopg.Connection[Any]) -> list[str]:
    """Every index's name (the registry is not secret: see maxsim.list_indexes)."""
    return [r[0] for r in conn.execute("SELECT name FROM maxsim.list_indexes() ORDER BY name")]


def schema_installed(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regprocedure('maxsim.list_indexes()') IS NOT NULL").fetchone()
    return bool(row and row[0])


def index_spec(conn: psycopg.Connection[Any], name: str) -> IndexSpec:
    """The index ``name``; NotFound naming the ones there are."""
    try:
        return get_index(conn, name)
    except PgmaxsimError:
        names = index_names(conn)
        known = ", ".join(names) if names else "none yet"
        raise NotFound(f"no index named {name!r} (indexes: {known})") from None


def columns(conn: psycopg.Connection[Any], info: IndexSpec) -> Columns:
    """The source's columns this role may SELECT; bytea ones are not shown, the image one is
    remembered (the index's image column, else one named ``image``, else the first bytea one)."""
    if not info.source:
        raise BadRequest(f"index {info.name!r} has no source table to show rows from")
    rows = conn.execute(
        "SELECT a.attname, a.atttypid = 'bytea'::regtype FROM pg_catalog.pg_attribute a"
        " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped"
        "   AND pg_catalog.has_column_privilege(a.attrelid, a.attnum, 'SELECT')"
        " ORDER BY a.attnum", (info.source,)).fetchall()
    shown = [n for n, is_bytes in rows if not is_bytes]
    binary = [n for n, is_bytes in rows if is_bytes]
    image = next((c for c in (info.image_column, "image") if c in binary), binary[0] if binary else None)
    return Columns(shown, image, "mime" if "mime" in shown else None)


# ---------------------------------------------------------------- searching

def encoder(info: IndexSpec) -> Any:
    """The index's model (loaded once per process, kept warm)."""
    if not info.model:
        raise BadRequest(f"index {info.name!r} has no model (its embeddings come from the application):"
                         " it can be searched from SQL or Python with query token arrays, not from this page")
    _one_cpu_thread()
    return pgsearch.encoder_for(info.model, info.model_revision)


def _one_cpu_thread() -> None:
    """Encode queries on one CPU thread. A query is a few tokens: torch's intra-op threads buy
    nothing there and, on a busy machine, spin against everything else (MiniLM, 2 cores at load 18:
    1,350 ms per query on torch's 2 threads, 78 ms on one). The handler threads still encode one
    query each in turn; a GPU model is not affected."""
    global _threads_set
    if _threads_set:
        return
    _threads_set = True
    try:
        import torch
    except ImportError:  # an encoder without torch: nothing to set
        return
    torch.set_num_threads(1)


def encode(info: IndexSpec, text: str) -> np.ndarray:
    """``text`` as query tokens through the index's model. The last queries are kept: a results
    page asks again for each thumbnail's heatmap and for the row a click opens."""
    if not text.strip():
        raise BadRequest("the query is empty: type something to search for")
    key = _encoded_key(info, text)
    with _encode_lock:
        tokens = _encoded.get(key)
        if tokens is None:
            tokens = pgsearch.encode_query(info, text, encoder(info))
            _encoded[key] = tokens
            while len(_encoded) > ENCODED_KEPT:
                _encoded.pop(next(iter(_encoded)))
        else:
            _encoded[key] = _encoded.pop(key)  # most recently used last
        return tokens


def _encoded_key(info: IndexSpec, text: str) -> tuple[Any, ...]:
    return (info.model, info.model_revision, info.dim, text)


def search(conn: psycopg.Connection[Any], info: IndexSpec, text: str, k: int) -> Found:
    """Encode ``text`` and search ``info`` for the top ``k`` rows, timing each stage."""
    timings = Timings()
    t = time.perf_counter()
    kept = _encoded_key(info, text) in _encoded
    tokens = encode(info, text)
    timings.add("encode", _ms(t), f"{len(tokens)} query tokens" + (
        " (kept from an earlier request)" if kept else " (the index's model, in this process)"))
    notices: list[str] = []

    def on_notice(d: psycopg.errors.Diagnostic) -> None:
        notices.append((d.message_primary or "").removeprefix("pgmaxsim: "))

    conn.execute("SELECT pg_catalog.set_config('pgmaxsim.timing', 'on', true)")
    conn.add_notice_handler(on_notice)
    t = time.perf_counter()
    try:
        hits = pgsearch.search(conn, info.name, tokens, k=k, info=info)
    finally:
        conn.remove_notice_handler(on_notice)
    statement_ms = _ms(t)
    _stage_timings(timings, notices, statement_ms)
    t = time.perf_counter()
    cols = columns(conn, info)
    keys = [info.key_text(h.id) for h in hits]
    rows = fetch_rows(conn, info, cols, keys)
    timings.add("rows", _ms(t), f"{len(rows)} source rows read")
    results = [Result(rank, key, h.score, rows.get(key, {}), bool(rows.get(key, {}).pop("pgmaxsim has image", False)))
               for rank, (key, h) in enumerate(zip(keys, hits), start=1)]
    pending = next((n for n in notices if "not embedded yet" in n), None)
    return Found(results, timings, pending, tokens)


def _stage_timings(timings: Timings, notices: list[str], statement_ms: float) -> None:
    """ANN and rescoring as maxsim.search reported them; scoring: the rest of its statement."""
    ann = rescore = None
    for n in notices:
        if m := _CANDIDATES.search(n):
            ann = float(m.group(2))
            what = "every row (fewer rows than candidates: exact)" if m.group(1) == "all rows" else \
                f"{m.group(1)} candidates"
            timings.add("ANN prefilter", ann, f"{what}; pooling {m.group(3)}")
        elif m := _RESCORED.search(n):
            rescore = float(m.group(2))
            timings.add("rescoring", rescore, f"to {m.group(1)} rows by centroid interaction")
    if ann is None:
        timings.add("ANN prefilter", None, "not reported by maxsim.search")
    if rescore is None:
        timings.add("rescoring", None, "not needed for this search")
    rest = max(0.0, statement_ms - (ann or 0.0) - (rescore or 0.0))
    note = "exact MaxSim of the candidates (the rest of maxsim.search, with its round trip)"
    if m := next(filter(None, (_SCORED.search(n) for n in notices)), None):  # PL/Python's own account
        note = (f"exact MaxSim of {m.group(1)} rows in PostgreSQL (token fetch {m.group(2)} ms, scoring"
                f" {m.group(3)} ms) and {m.group(4)} by the scorer service; the rest of maxsim.search, with its"
                " round trip")
    timings.add("scoring", rest, note)


def score_of(conn: psycopg.Connection[Any], info: IndexSpec, tokens: np.ndarray, key: str) -> float | None:
    """The row's exact MaxSim for the query; None when it is not in the index (or not visible)."""
    hits = pgsearch.rerank(conn, info.name, tokens, [info.key_from_text(key)], info=info)
    return hits[0].score if hits else None


# ---------------------------------------------------------------- rows

def _key_match(info: IndexSpec) -> sql.Composable:
    # id_type is format_type output (quoted by the server): safe to splice, as pgmaxsim.search does
    return sql.SQL("t.{} = ANY(%s::text[]::{}[])").format(sql.Identifier(info.id_column or ""),
                                                         sql.SQL(info.id_type))


def fetch_rows(conn: psycopg.Connection[Any], info: IndexSpec, cols: Columns,
               keys: list[str]) -> dict[str, dict[str, Any]]:
    """Rows by key text: the shown columns, and ``"pgmaxsim has image"`` when an image is there."""
    if not keys:
        return {}
    picked = [sql.SQL("t.{}").format(sql.Identifier(c)) for c in cols.shown]
    has = sql.SQL("t.{} IS NOT NULL").format(sql.Identifier(cols.image)) if cols.image else sql.SQL("false")
    q = sql.SQL("SELECT t.{key}::text, {has} AS \"pgmaxsim has image\"{sep}{cols} FROM {src} t WHERE {match}").format(
        key=sql.Identifier(info.id_column or ""), has=has, sep=sql.SQL(", " if picked else ""),
        cols=sql.SQL(", ").join(picked), src=sql.SQL(info.source or ""), match=_key_match(info))
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(q, (keys,))
            names = [d.name for d in cur.description or []]
            return {r[0]: dict(zip(names[1:], r[1:])) for r in cur.fetchall()}
    except psycopg.errors.InvalidTextRepresentation:
        raise BadRequest(f"{keys[0]!r} is not a key of index {info.name!r} ({info.id_type})") from None


def row_image(conn: psycopg.Connection[Any], info: IndexSpec, cols: Columns, key: str) -> tuple[bytes, str] | None:
    """The row's image bytes and media type, or None (no image column, no such row, no image)."""
    if not cols.image:
        return None
    mime = sql.SQL("t.{}").format(sql.Identifier(cols.mime)) if cols.mime else sql.SQL("NULL")
    q = sql.SQL("SELECT t.{img}, {mime} FROM {src} t WHERE {match}").format(
        img=sql.Identifier(cols.image), mime=mime, src=sql.SQL(info.source or ""), match=_key_match(info))
    try:
        with conn.transaction():
            row = conn.execute(q, ([key],)).fetchone()
    except psycopg.errors.InvalidTextRepresentation:
        raise BadRequest(f"{key!r} is not a key of index {info.name!r} ({info.id_type})") from None
    if not row or row[0] is None:
        return None
    return bytes(row[0]), row[1] or "application/octet-stream"


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


__all__ = ["Columns", "Found", "Result", "Stage", "Timings", "columns", "encode", "encoder", "fetch_rows", "index_names",
           "index_spec", "row_image", "schema_installed", "score_of", "search"]

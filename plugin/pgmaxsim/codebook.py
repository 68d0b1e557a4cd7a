"""The codebook first stage of an index, in its PostgreSQL tables (sql/idempotent/035_firststage.sql).

:mod:`pgmaxsim.firststage` is the NumPy model (two-level codebook, assignment, probe);
this module keeps an index's copy of it current:

- :func:`live` reads the index's live codebook (cached per process by index, generation
  and table oid: a generation's codebook never changes once live);
- :func:`row_codes` is what a writer stores for a row: its distinct codes under it;
- :func:`mark_due` is all a writer does about training: past option ``train_tokens`` (then
  once the rows have grown by ``maxsim._fs_growth`` since the last training: 10 % while the
  index is small, up to 2x from 2M tokens) the index is marked due (option ``fs_due``); the
  worker's trainer or ``maxsim.train_first_stage`` trains it later, never the write; nor does
  a write merge its rows into the sketch lists (the worker's trainer does: pgmaxsim.worker.train);
- :func:`train` (the worker's trainer, ``pgmaxsim index reindex NAME --first-stage``) runs the
  training steps of sql/idempotent/038_fs_train.sql from this client, as any role that
  manages the index: a new codebook from a sample of the stored tokens in the *other* slot,
  that slot's codes for every row, and a switch by one registry update (option ``fs_gen``).

Why this is exact under writes: writers store codes only for the live slot (the other
slot's column is written NULL), and recheck the generation after taking the token table's
lock (pgmaxsim.writes). The training fills every row whose new-slot codes are NULL (a row
rewritten meanwhile is skipped by its version and read again), again at the end while
holding the token table in EXCLUSIVE mode (writers wait, readers go on), then switches; so at
the switch every row has codes under the new codebook. Searches read the registry and the
tables in one snapshot, so each uses one complete codebook; rows without live codes are
always candidates.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from pgmaxsim import firststage as fs
from pgmaxsim import fs_train, sketch_lists
from pgmaxsim.db.codec import decode_halfvec_array
from pgmaxsim.errors import PgmaxsimError
from pgmaxsim.fs_train import sizing  # noqa: F401 - part of this module's surface
from pgmaxsim.registry import IndexSpec, get_index

#: Rows assigned per round trip while filling a slot.
BATCH = 256
#: Sample rows fetched per round trip (a 1,000-token fp16 row of d=128 is 256 KB).
SAMPLE_PAGE = 64


@dataclass(frozen=True)
class Live:
    """The live codebook of an index: its generation, slot (``gen % 2``) and centroids."""

    gen: int
    cb: fs.Codebook

    @property
    def slot(self) -> int:
        return self.gen % 2


def is_codebook(spec: IndexSpec) -> bool:
    return spec.pooling == "codebook"


def gen_of(spec: IndexSpec) -> int | None:
    g = spec.options.get("fs_gen")
    return None if g is None else int(g)


def column(slot: int) -> str:
    return f"codes_{int(slot)}"


# ---------------------------------------------------------------- reading the codebook

_cache: dict[tuple[int, int, int], Live] = {}


def _readable(conn: psycopg.Connection[Any], spec: IndexSpec) -> bool:
    row = conn.execute("SELECT pg_catalog.has_table_privilege(pg_catalog.to_regclass(%s), 'SELECT')",
                       (f"maxsim.fs_fine_{spec.id}",)).fetchone()
    return bool(row and row[0])


def live(conn: psycopg.Connection[Any], spec: IndexSpec) -> Live | None:
    """The index's live codebook, or None (not a codebook index, or not trained: rows are then
    written without codes, and stay candidates). Read from its tables by the schema owner, through
    ``maxsim.first_stage_codebook`` by a granted role that manages the index."""
    gen = gen_of(spec)
    if not is_codebook(spec) or gen is None:
        return None
    oid = conn.execute("SELECT pg_catalog.to_regclass(%s)::oid", (f"maxsim.fs_fine_{spec.id}",)).fetchone()
    key = (spec.id, gen, int(oid[0]) if oid and oid[0] else 0)
    if key in _cache:
        return _cache[key]
    got = _load(conn, spec.id, gen % 2) if _readable(conn, spec) else _load_granted(conn, spec, gen)
    if got is None:
        return None
    _cache.clear()   # one codebook per process is the common case; never let old generations pile up
    _cache[key] = Live(gen, got)
    return _cache[key]


def _load(conn: psycopg.Connection[Any], index_id: int, slot: int) -> fs.Codebook | None:
    with conn.cursor(binary=True) as cur:
        row = cur.execute(sql.SQL(
            "SELECT (SELECT pg_catalog.array_send(pg_catalog.array_agg(c.vec ORDER BY c.cell)) FROM {} c WHERE c.slot = %s),"
            " (SELECT pg_catalog.array_send(pg_catalog.array_agg(f.vec ORDER BY f.code)) FROM {} f WHERE f.slot = %s)").format(
                sql.Identifier("maxsim", f"fs_coarse_{index_id}"), sql.Identifier("maxsim", f"fs_fine_{index_id}")),
            (slot, slot)).fetchone()
    if not row or row[0] is None or row[1] is None:
        return None
    coarse = decode_halfvec_array(row[0]).astype(np.float32)
    fine = decode_halfvec_array(row[1]).astype(np.float32)
    return fs.Codebook(coarse, fine.reshape(len(coarse), len(fine) // len(coarse), -1))


def _load_granted(conn: psycopg.Connection[Any], spec: IndexSpec, gen: int) -> fs.Codebook | None:
    try:
        with conn.cursor(binary=True) as cur:
            row = cur.execute("SELECT gen, pg_catalog.array_send(coarse), pg_catalog.array_send(fine)"
                              " FROM maxsim.first_stage_codebook(%s)", (spec.name,)).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None
    if not row or row[0] != gen or row[1] is None or row[2] is None:
        return None
    coarse = decode_halfvec_array(row[1]).astype(np.float32)
    fine = decode_halfvec_array(row[2]).astype(np.float32)
    return fs.Codebook(coarse, fine.reshape(len(coarse), len(fine) // len(coarse), -1))


def row_codes(book: Live, stored: np.ndarray) -> list[int]:
    """A row's distinct codes (sorted) under ``book``; ``stored`` = its tokens as stored."""
    return np.unique(fs.assign(book.cb, stored)).tolist()



# ---------------------------------------------------------------- marking a training due

def mark_due(conn: psycopg.Connection[Any], spec: IndexSpec) -> bool:
    """After a write to ``spec``: mark a codebook index due for training when the write took it past
    its threshold (``maxsim.first_stage_mark``: O(1), never waits, never trains). Never merges the
    written rows into the sketch lists: until the worker's trainer (or an explicit
    ``maxsim.first_stage_sketch_merge``) does, they are candidates of every search. True when marked now."""
    if not is_codebook(spec):
        return False
    row = conn.execute("SELECT maxsim.first_stage_mark(%s)", (spec.name,)).fetchone()
    return bool(row and row[0])


# ---------------------------------------------------------------- training

def train_due(conn: psycopg.Connection[Any], name: str, *, seed: int = 0, merge_all: bool = False) -> Trained | None:
    """What the worker's trainer does for index ``name`` (pgmaxsim.worker.train), now: train it if it
    is marked due, then merge its pending rows into the sketch lists once a merge is due (every
    pending row with ``merge_all``, and settle the lists into one segment, as ``pgmaxsim worker
    --once`` does before it exits). For scripts and benchmarks that write without a worker. Returns
    the training, or None (none was due; nothing at all inside an open transaction of the caller:
    each step commits)."""
    if not conn.autocommit and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return None
    was = conn.autocommit
    conn.autocommit = True
    try:
        row = conn.execute("SELECT due_since FROM maxsim.first_stage_status(%s)", (name,)).fetchone()
        done = None if row is None or row[0] is None else train(conn, name, seed=seed)
        sketch_lists.merge_calls(conn, name, not merge_all, settle=merge_all)
        return done
    finally:
        conn.autocommit = was


@dataclass
class Trained:
    name: str
    gen: int
    n_coarse: int
    n_fine: int
    sample_tokens: int
    rows: int
    seconds_train: float
    seconds_fill: float


def train(conn: psycopg.Connection[Any], name: str, *, seed: int = 0, stop: threading.Event | None = None) -> Trained:
    """(Re)train the codebook of index ``name`` and switch to it, as any role that manages it
    (the steps of sql/idempotent/038_fs_train.sql; see the module docstring).

    ``conn`` must be in autocommit mode: each step and each filled batch commits, and only the
    switch holds the token table (EXCLUSIVE: writers wait a moment, searches go on). ``stop`` set
    (the worker stopping): PgmaxsimError at the next step or batch before the switch, the index as it
    was (its half-built slot is cleared by the next training).
    """
    import time

    from pgmaxsim.db.adapters import register_tokens

    if not conn.autocommit:
        raise PgmaxsimError("training a first-stage codebook needs an autocommit connection (each step commits)")
    spec = get_index(conn, name)
    if not is_codebook(spec):
        from pgmaxsim import citus

        if citus.distributed_index(conn, spec):
            raise PgmaxsimError(citus.FIRST_STAGE_REFUSED.format(name=name))
        raise PgmaxsimError(f"index {name!r} has first stage {spec.pooling!r}; --first-stage retrains a"
                            " 'codebook' first stage (create the index with options first_stage=codebook)")
    register_tokens(conn)
    t0 = time.perf_counter()
    gen, n_rows, n_tokens, take = conn.execute(
        "SELECT gen, n_rows, n_tokens, sample_rows FROM maxsim.first_stage_train_begin(%s)", (name,)).fetchone()
    if gen is None:
        raise PgmaxsimError(f"the first stage of {name!r} is being trained by another session")
    try:
        if not n_tokens:
            raise PgmaxsimError(f"index {name!r} has no rows yet: nothing to train its first stage on")
        cb, used = _build(conn, spec, gen, int(n_tokens), int(take), seed, stop)
        t1 = time.perf_counter()
        book = Live(gen, cb)
        _fill(conn, spec, book, stop)
        _check(stop)
        # the new slot's residual sketch lists (sql/idempotent/034_sketch.sql); the switch merges the rest
        conn.execute("SELECT maxsim.first_stage_train_sketch(%s, %s)", (name, gen))
        with conn.transaction():
            conn.execute("SELECT maxsim.switch_lock(%s)", (name,))
            _fill(conn, spec, book)
            conn.execute("SELECT maxsim.first_stage_train_switch(%s, %s)", (name, gen))
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT maxsim.first_stage_train_end(%s, %s)", (name, gen))
        raise
    conn.execute("SELECT maxsim.first_stage_train_end(%s, %s)", (name, gen))   # the old slot goes
    if _readable(conn, spec):
        _compact(conn, spec)
    return Trained(name, gen, cb.n_coarse, cb.n_fine, used, int(n_rows), t1 - t0, time.perf_counter() - t1)


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise PgmaxsimError("training stopped before its switch")


def _build(conn: psycopg.Connection[Any], spec: IndexSpec, gen: int, n_tokens: int, take: int,
           seed: int, stop: threading.Event | None = None) -> tuple[fs.Codebook, int]:
    """The new codebook (rounded as stored) from ``take`` rows drawn in a seeded order, and the
    number of sample tokens; stored in the next slot (step "codebook")."""
    from pgmaxsim.db.adapters import Tokens

    blobs: list[bytes] = []
    ns: list[int] = []
    with conn.cursor(binary=True) as cur:
        for off in range(0, take, SAMPLE_PAGE):
            tok, n = cur.execute("SELECT tokens, n_tokens FROM maxsim.first_stage_train_sample(%s, %s, %s, %s, %s)",
                                 (spec.name, seed, take, off, SAMPLE_PAGE)).fetchone()
            blobs += tok or []
            ns += n or []
            _check(stop)
    cb, used = fs_train.build(blobs, ns, spec.dim, spec.storage, n_tokens, spec.options, seed)
    _check(stop)
    conn.execute("SELECT maxsim.first_stage_train_codebook(%s, %s, %s, %s)",
                 (spec.name, gen, Tokens(cb.coarse), Tokens(cb.fine.reshape(-1, spec.dim))))
    return cb, used


def _fill(conn: psycopg.Connection[Any], spec: IndexSpec, book: Live, stop: threading.Event | None = None) -> int:
    """Assign codes in ``book``'s slot to every row that has none there (step "fill"); each batch
    commits on its own unless the caller holds a transaction. Returns the rows filled."""
    n = idle = 0
    while True:
        with conn.cursor(binary=True) as cur:
            ids, versions, blobs, ns = cur.execute(
                "SELECT ids, versions, tokens, n_tokens FROM maxsim.first_stage_train_uncoded(%s, %s, %s)",
                (spec.name, book.gen, BATCH)).fetchone()
        if not ids:
            return n
        _check(stop)
        flat, lens = fs_train.batch_codes(book.cb, blobs, ns, spec.dim, spec.storage)
        got = conn.execute("SELECT maxsim.first_stage_train_codes(%s, %s, %s::text[], %s::int8[], %s::int4[], %s::int4[])",
                           (spec.name, book.gen, ids, versions, flat, lens)).fetchone()[0]
        n += int(got)
        idle = idle + 1 if not got else 0
        if idle > 100:   # every row read was rewritten before its codes were stored, 100 times over
            raise PgmaxsimError(f"the rows of {spec.name!r} keep changing while their first-stage codes are filled")


def _compact(conn: psycopg.Connection[Any], spec: IndexSpec) -> None:
    """Give back what the filling and clearing left behind (the schema owner only: VACUUM and
    REINDEX need the tables' owner; autovacuum does the heap for other trainers): every row's
    codes were rewritten twice, so the token table's heap and the codes' indexes hold as many dead
    entries as live ones. VACUUM makes the heap space reusable; the codes' indexes are rebuilt
    (CONCURRENTLY: searches and writers go on), which also packs the live GIN tighter (servers
    without plpython3u only have one: maxsim._fs_create)."""
    tables = [spec.token_table, f"fs_coarse_{spec.id}", f"fs_fine_{spec.id}"]
    tables += [t for t in (f"fs_sk_{spec.id}", f"fs_skrow_{spec.id}")   # the old slot's sketch lists (034_sketch.sql)
               if conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (f"maxsim.{t}",)).fetchone()[0]]
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(
        sql.SQL(", ").join(sql.Identifier("maxsim", t) for t in tables)))
    for slot in (0, 1):
        for name in (f"{spec.token_table}_codes_{slot}_gin", f"{spec.token_table}_uncoded_{slot}"):
            if conn.execute("SELECT pg_catalog.to_regclass(%s) IS NULL", (f"maxsim.{name}",)).fetchone()[0]:
                continue
            conn.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier("maxsim", name)))

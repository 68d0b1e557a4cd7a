"""The codebook first stage of an index, in its PostgreSQL tables (sql/idempotent/035_firststage.sql).

:mod:`pgmaxsim.firststage` is the NumPy model (two-level codebook, assignment, probe);
this module keeps an index's copy of it current:

- :func:`live` reads the index's live codebook (cached per process by index, generation
  and table oid: a generation's codebook never changes once written);
- :func:`row_codes` is what a writer stores for a row: its distinct codes under it;
- :func:`train` (``pgmaxsim index reindex NAME --first-stage``, and the first write that
  takes an untrained index past option ``train_tokens``, :func:`maybe_train`) builds a
  new codebook from a sample of the stored tokens in the *other* slot, fills that slot's
  codes for every row, and switches with one registry update (option ``fs_gen``).

Why this is exact under writes: writers store codes only for the live slot (the other
slot's column is written NULL), and recheck the generation after taking the token table's
lock (pgmaxsim.writes). The retrain fills every row whose new-slot codes are NULL, again
at the end while holding the token table in EXCLUSIVE mode (writers wait, readers go on),
then switches; so at the switch every row has codes under the new codebook. Searches read
the registry and the tables in one snapshot, so each uses one complete codebook; rows
without live codes are always candidates. Retraining needs the schema owner (it writes
the tables directly); other roles' rows stay uncoded until then (still found).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from pgmaxsim import firststage as fs
from pgmaxsim.db.codec import decode_halfvec_array, encode_halfvec
from pgmaxsim.errors import PgmaxsimError
from pgmaxsim.kernels import quantize
from pgmaxsim.registry import IndexSpec, get_index

#: Rows assigned per round trip while filling a slot.
BATCH = 256
#: A trained index is trained again once it holds this many times the rows it was trained on
#: (phrase benchmark: a codebook trained on 54 % of the final rows lost 2.3 points of title top-1).
GROWTH = 2
#: The session setting that keeps a codes-only UPDATE out of the change log (maxsim._tok_row).
CODES_ONLY = "SELECT pg_catalog.set_config('pgmaxsim.codes_only', 'on', true)"


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


def sizing(n_tokens: int, options: dict[str, Any]) -> tuple[int, int]:
    """``(n_coarse, n_fine)`` for an index of ``n_tokens`` tokens: ~``tokens_per_code`` tokens per
    code, 256 coarse cells at most, and no more fine centroids per cell than the training sample
    can place (4 sample tokens per centroid) or ``max_fine``.

    >>> sizing(10_000_000, {}), sizing(130_000, {}), sizing(1_000, {})
    ((256, 488), (80, 82), (7, 8))
    """
    per_code = int(options.get("tokens_per_code", 20))
    sample = min(n_tokens, int(options.get("train_sample", 500_000)))
    codes = max(1, n_tokens // per_code)
    n_coarse = max(1, min(256, math.isqrt(codes)))
    n_fine = max(1, min(int(options.get("max_fine", 2048)), math.ceil(codes / n_coarse),
                        sample // (4 * n_coarse)))
    return n_coarse, n_fine


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


# ---------------------------------------------------------------- training

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


def _stored(spec: IndexSpec, blob: bytes, n: int) -> np.ndarray:
    """A row's stored tokens as float32 (its tier told by its length, as the scorer does)."""
    from pgmaxsim.plpy.api import row_storage

    tier = row_storage(len(blob), int(n), spec.dim, spec.storage)
    return quantize.dequantize(*quantize.decode_tokens(bytes(blob), spec.dim, tier)).astype(np.float32)


def _sample(conn: psycopg.Connection[Any], spec: IndexSpec, n_tokens: int, want: int, seed: int) -> np.ndarray:
    """About ``want`` stored tokens, from rows drawn at random (all tokens of few rows would
    over-represent them; a fraction of every row's tokens reads every row's bytes: a middle way)."""
    rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(spec.token_ident())).fetchone()
    n_rows = max(1, int(rows[0]) if rows else 1)
    per_row = max(1.0, n_tokens / n_rows)
    take = min(n_rows, max(1, math.ceil(2 * want / per_row)))
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT pg_catalog.setseed(%s)", (((seed % 1000) / 1000.0),))
        for blob, n in cur.execute(sql.SQL("SELECT t.tokens, t.n_tokens FROM {} t ORDER BY pg_catalog.random() LIMIT %s").format(
                spec.token_ident()), (take,)):
            x = _stored(spec, blob, n)
            parts.append(x[rng.random(len(x)) < 0.5] if len(x) > 1 else x)
    x = np.concatenate(parts) if parts else np.zeros((0, spec.dim), np.float32)
    return x[rng.choice(len(x), size=want, replace=False)] if len(x) > want else x


def _write_codebook(conn: psycopg.Connection[Any], spec: IndexSpec, slot: int, cb: fs.Codebook) -> None:
    """Replace slot ``slot``'s codebook rows (binary COPY; the vectors rounded to halfvec)."""
    from pgmaxsim.writes import _encoded

    coarse, fine = sql.Identifier("maxsim", f"fs_coarse_{spec.id}"), sql.Identifier("maxsim", f"fs_fine_{spec.id}")
    with conn.cursor() as cur:
        cur.adapters.register_dumper(None, _encoded(spec.halfvec_oid))
        cur.execute(sql.SQL("DELETE FROM {} WHERE slot = %s").format(coarse), (slot,))
        cur.execute(sql.SQL("DELETE FROM {} WHERE slot = %s").format(fine), (slot,))
        with cur.copy(sql.SQL("COPY {} (slot, cell, vec) FROM STDIN (FORMAT binary)").format(coarse)) as cp:
            cp.set_types(["int2", "int4", spec.halfvec_oid])
            for c, v in enumerate(cb.coarse):
                cp.write_row((slot, c, encode_halfvec(v)))
        with cur.copy(sql.SQL("COPY {} (slot, code, cell, vec) FROM STDIN (FORMAT binary)").format(fine)) as cp:
            cp.set_types(["int2", "int4", "int4", spec.halfvec_oid])
            for c in range(cb.n_coarse):
                for j, v in enumerate(cb.fine[c]):
                    cp.write_row((slot, c * cb.n_fine + j, c, encode_halfvec(v)))


def _fill(conn: psycopg.Connection[Any], spec: IndexSpec, book: Live, *, in_tx: bool = False) -> int:
    """Assign codes in ``book``'s slot to every row that has none there; returns rows filled."""
    col = sql.Identifier(column(book.slot))
    pick = sql.SQL("SELECT t.id::text, t.tokens, t.n_tokens FROM {} t WHERE t.{} IS NULL LIMIT %s").format(
        spec.token_ident(), col)
    put = sql.SQL("UPDATE {} t SET {} = %s WHERE t.id = %s::text::{} AND t.{} IS NULL").format(
        spec.token_ident(), col, spec.id_type_sql(), col)
    n = 0
    while True:
        with conn.cursor(binary=True) as cur:
            batch = cur.execute(pick, (BATCH,)).fetchall()
        if not batch:
            return n
        args = [(row_codes(book, _stored(spec, blob, k)), key) for key, blob, k in batch]
        if in_tx:
            conn.execute(CODES_ONLY)
            with conn.cursor() as cur:
                cur.executemany(put, args)
        else:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(CODES_ONLY)
                cur.executemany(put, args)
        n += len(batch)


def train(conn: psycopg.Connection[Any], name: str, *, seed: int = 0) -> Trained:
    """(Re)train the codebook of index ``name`` and switch to it (see the module docstring).

    ``conn`` must be in autocommit mode: each filled batch commits, and only the switch holds
    the token table (EXCLUSIVE: writers wait a moment, searches go on).
    """
    import time

    if not conn.autocommit:
        raise PgmaxsimError("training a first-stage codebook needs an autocommit connection (each step commits)")
    spec = get_index(conn, name)
    if not is_codebook(spec):
        raise PgmaxsimError(f"index {name!r} has first stage {spec.pooling!r}; --first-stage retrains a"
                            " 'codebook' first stage (create the index with options first_stage=codebook)")
    if not _readable(conn, spec):
        raise PgmaxsimError(f"retraining the first stage of {name!r} needs the schema owner (or a superuser)")
    key = conn.execute("SELECT pg_catalog.hashtext(%s)", (f"pgmaxsim/firststage/{spec.id}",)).fetchone()[0]
    if not conn.execute("SELECT pg_catalog.pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
        raise PgmaxsimError(f"the first stage of {name!r} is being trained by another session")
    try:
        return _train(conn, spec, seed, time.perf_counter)
    finally:
        conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", (key,))


def _train(conn: psycopg.Connection[Any], spec: IndexSpec, seed: int, clock: Any) -> Trained:
    t0 = clock()
    tot = conn.execute(sql.SQL("SELECT coalesce(sum(n_tokens), 0), count(*) FROM {}").format(spec.token_ident())).fetchone()
    n_tokens, n_rows = int(tot[0]), int(tot[1])
    if n_tokens == 0:
        raise PgmaxsimError(f"index {spec.name!r} has no rows yet: nothing to train its first stage on")
    n_coarse, n_fine = sizing(n_tokens, spec.options)
    sample = _sample(conn, spec, n_tokens, min(n_tokens, int(spec.options.get("train_sample", 500_000))), seed)
    cb = fs.train(sample, n_coarse, n_fine, seed=seed)
    old = gen_of(spec)
    gen = 0 if old is None else old + 1
    slot = gen % 2
    with conn.transaction():
        conn.execute(CODES_ONLY)
        conn.execute(sql.SQL("UPDATE {} SET {} = NULL WHERE {} IS NOT NULL").format(
            spec.token_ident(), sql.Identifier(column(slot)), sql.Identifier(column(slot))))
        _write_codebook(conn, spec, slot, cb)
    t1 = clock()
    book = Live(gen, _load(conn, spec.id, slot) or cb)   # the stored (fp16) centroids, as searches see them
    _fill(conn, spec, book)
    with conn.transaction():
        conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(spec.token_ident()))
        _fill(conn, spec, book, in_tx=True)
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(spec.token_ident())).fetchone()
        conn.execute("UPDATE maxsim.indexes SET options = options"
                     " || jsonb_build_object('fs_gen', %s::integer, 'fs_rows', %s::integer) WHERE id = %s",
                     (gen, int(rows[0]) if rows else 0, spec.id))
    if old is not None:   # the old slot's codes and codebook: searches that began before the switch keep their snapshot
        with conn.transaction():
            conn.execute(CODES_ONLY)
            conn.execute(sql.SQL("UPDATE {} SET {} = NULL WHERE {} IS NOT NULL").format(
                spec.token_ident(), sql.Identifier(column(old % 2)), sql.Identifier(column(old % 2))))
            for t in (f"fs_coarse_{spec.id}", f"fs_fine_{spec.id}"):
                conn.execute(sql.SQL("DELETE FROM {} WHERE slot = %s").format(sql.Identifier("maxsim", t)), (old % 2,))
    _compact(conn, spec)
    return Trained(spec.name, gen, cb.n_coarse, cb.n_fine, len(sample), n_rows, t1 - t0, clock() - t1)


def due(conn: psycopg.Connection[Any], spec: IndexSpec) -> bool:
    """Whether a codebook index should be (re)trained now: never trained and holding option
    ``train_tokens`` tokens, or grown to :data:`GROWTH` times the rows it was trained on (a
    codebook sized and sampled for fewer rows puts too many tokens in each code). Cheap: the
    catalog's row estimate and live-row count first, an exact bounded count only when they say so."""
    if gen_of(spec) is None:
        want = int(spec.options.get("train_tokens", 65_536))
        row = conn.execute(sql.SQL("SELECT coalesce(sum(s.n_tokens), 0) FROM (SELECT n_tokens FROM {} LIMIT %s) s").format(
            spec.token_ident()), (want,)).fetchone()
        return bool(row) and int(row[0]) >= want
    bar = GROWTH * max(1, int(spec.options.get("fs_rows", 0)))
    est = conn.execute("SELECT greatest(c.reltuples, pg_catalog.pg_stat_get_live_tuples(c.oid))"
                       " FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass(%s)",
                       (f"maxsim.{spec.token_table}",)).fetchone()
    if not est or est[0] is None or float(est[0]) < bar:
        return False
    row = conn.execute(sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT %s) s").format(spec.token_ident()),
                       (bar,)).fetchone()
    return bool(row) and int(row[0]) >= bar


def _compact(conn: psycopg.Connection[Any], spec: IndexSpec) -> None:
    """Give back what the filling and clearing left behind: every row's codes were rewritten
    twice, so the token table's heap and the codes' indexes hold as many dead entries as live
    ones. VACUUM makes the heap space reusable; the codes' indexes are rebuilt (CONCURRENTLY:
    searches and writers go on), which also packs the live GIN tighter than row-by-row inserts."""
    tables = [spec.token_table, f"fs_coarse_{spec.id}", f"fs_fine_{spec.id}"]
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(
        sql.SQL(", ").join(sql.Identifier("maxsim", t) for t in tables)))
    for slot in (0, 1):
        for name in (f"{spec.token_table}_codes_{slot}_gin", f"{spec.token_table}_uncoded_{slot}"):
            conn.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier("maxsim", name)))


def maybe_train(conn: psycopg.Connection[Any], spec: IndexSpec) -> Trained | None:
    """(Re)train a codebook index when :func:`due` (called by writers after they commit; a
    no-op otherwise, inside a transaction, or for a role that may not train it)."""
    if not is_codebook(spec):
        return None
    spec = get_index(conn, spec.name)   # the caller's copy may predate a training
    if not _readable(conn, spec) or not due(conn, spec):
        return None
    if not conn.autocommit and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return None   # inside the caller's transaction: the next writer outside one trains it
    was = conn.autocommit
    conn.autocommit = True
    try:
        return train(conn, spec.name)
    except PgmaxsimError:
        return None   # another session is training it
    finally:
        conn.autocommit = was

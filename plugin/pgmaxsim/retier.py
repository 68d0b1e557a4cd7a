"""Change an index's storage tier or pool factor from its stored tokens, answered across the switch.

``pgmaxsim index reindex NAME --storage int8 --pool-factor 3`` (:func:`retier`):

1. check that the stored tokens suffice (:func:`plan`): fp16 -> int8 and pooling
   unpooled tokens do; int8 -> fp16 (the fp16 values are gone) and re-pooling
   already pooled tokens (the raw tokens are gone) do not, and say so;
2. create a *shadow* index ``NAME#retier`` with the new options (no model: nothing
   is queued for it; the source's delete/key triggers keep it in step);
3. copy every row into it, re-encoded from the stored bytes (decoded, pooled when
   asked, encoded in the new tier; pooled vector and centroids from the new bytes),
   then catch up on the rows written meanwhile: each pass takes a snapshot first and
   copies the rows of every transaction the previous pass's snapshot did not see
   (``maxsim.changes``, as the scorer syncs), so a writer that committed late is
   never missed;
4. switch in one transaction: block writers (EXCLUSIVE), copy the last changes, drop
   rows deleted meanwhile, swap the two indexes' tables by renaming them (ACCESS
   EXCLUSIVE for the few milliseconds of the renames: searches wait, never fail),
   swap their options, tell the scorer to reload; then drop the shadow (the old tables).

Every step goes through SQL entry points that check the caller manages the index
(``maxsim.read_rows``, ``write_stage``/``write_commit``, ``switch_lock``, ``switch_index``), so the
owner of the source table reindexes as a granted role, without the schema owner.

A statement that started before the switch reads the registry as it was and the
token table as it is now; the PL/Python scorer therefore takes each row's tier from
its byte length (:func:`pgmaxsim.plpy.api.row_storage`), not from the registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from pgmaxsim import codebook, pooling, writes
from pgmaxsim import firststage as fs
from pgmaxsim.db.codec import encode_halfvec
from pgmaxsim.errors import PgmaxsimError
from pgmaxsim.kernels import quantize
from pgmaxsim.registry import IndexSpec, get_index

SUFFIX = "#retier"
BATCH = 64


@dataclass
class Retiered:
    name: str
    rows: int
    storage: str
    pool_factor: int
    bytes_before: int
    bytes_after: int


def plan(old_storage: str, old_factor: int, new_storage: str, new_factor: int) -> bool:
    """Whether the switch pools the stored tokens; raises PgmaxsimError when they do not suffice.

    >>> plan("fp16", 1, "int8", 3), plan("fp16", 2, "int8", 2)
    (True, False)
    """
    if new_storage not in quantize.STORAGE_TIERS:
        raise PgmaxsimError(f"unknown storage {new_storage!r} (expected one of {', '.join(quantize.STORAGE_TIERS)})")
    if not isinstance(new_factor, int) or new_factor < 1:
        raise PgmaxsimError(f"pool factor must be an integer of at least 1 (1 = no pooling), got {new_factor!r}")
    if (old_storage, old_factor) == (new_storage, new_factor):
        raise PgmaxsimError(f"the index already stores {new_storage} with pool factor {new_factor}")
    if old_storage == "int8" and new_storage == "fp16":
        raise PgmaxsimError("the index stores int8 tokens, which do not hold the fp16 values: re-encoding from the"
                            " source is not supported by reindex --storage (re-embed with --model, or recreate the index)")
    if old_factor > 1 and new_factor != old_factor:
        raise PgmaxsimError(f"the index stores tokens pooled by {old_factor}: pool factor {new_factor} needs the raw"
                            " tokens, which are not stored (re-embed with --model, or recreate the index)")
    return old_factor == 1 and new_factor > 1


def _bytes(conn: psycopg.Connection[Any], spec: IndexSpec) -> int:
    row = conn.execute("SELECT bytes FROM maxsim.index_info(%s)", (spec.name,)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


_COLUMNS = "t.id::text, t.tokens, t.n_raw_tokens, t.model, t.model_revision, t.content_hash, t.version, t.layout"
SNAPSHOT = "SELECT pg_catalog.pg_current_snapshot()::text"


def _staged(conn: psycopg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    """The rows ``maxsim.read_rows`` / ``read_changed_rows`` put in temp table ``table``."""
    q = sql.SQL("SELECT " + _COLUMNS + " FROM {} t ORDER BY t.version").format(sql.Identifier("pg_temp", table))
    with conn.cursor(binary=True) as cur:
        return cur.execute(q).fetchall()


def _all_rows(conn: psycopg.Connection[Any], spec: IndexSpec) -> Iterator[list[tuple[Any, ...]]]:
    """Batches of every row of the main index, in version order (rows rewritten meanwhile
    come again later, under their new version). Read through ``maxsim.read_rows``, which any
    role that manages the index may call."""
    version = 0
    while True:
        table = conn.execute("SELECT maxsim.read_rows(%s, %s, %s)", (spec.name, version, BATCH)).fetchone()[0]
        batch = _staged(conn, table)
        if not batch:
            return
        yield batch
        version = int(batch[-1][6])


def _changed_rows(conn: psycopg.Connection[Any], spec: IndexSpec, snap: str) -> Iterator[list[tuple[Any, ...]]]:
    """Batches of the rows written by transactions that snapshot ``snap`` did not see."""
    table = conn.execute("SELECT maxsim.read_changed_rows(%s, %s)", (spec.name, snap)).fetchone()[0]
    if table is None:   # truncated meanwhile: everything again
        yield from _all_rows(conn, spec)
        return
    rows = _staged(conn, table)
    for start in range(0, len(rows), BATCH):
        yield rows[start:start + BATCH]


def _encode(spec: IndexSpec, shadow: IndexSpec, repool: bool, blob: bytes,
            n_raw: int) -> tuple[bytes, np.ndarray, int, bytes, np.ndarray | None]:
    """A stored row re-encoded for ``shadow``: its bytes, their values (float32), the raw count,
    the pooled vector's binary halfvec and the row centroids (centroids first stage) or None."""
    values = quantize.dequantize(*quantize.decode_tokens(bytes(blob), spec.dim, spec.storage))
    if repool:
        values = pooling.pool_tokens(values, shadow.pool_factor)
    new = quantize.encode_tokens(values, shadow.storage)
    stored = quantize.dequantize(*quantize.decode_tokens(new, shadow.dim, shadow.storage))
    pooled, cents = pooling.pool(stored, shadow.pooling, shadow.options)
    return new, stored, int(n_raw), encode_halfvec(pooled), cents


def _copy(conn: psycopg.Connection[Any], spec: IndexSpec, shadow: IndexSpec, repool: bool,
          batches: Iterator[list[tuple[Any, ...]]], book: codebook.Live | None = None) -> int:
    """Copy (replace) rows into the shadow, re-encoded; returns rows copied. ``book``: the main
    index's live codebook (it stays the index's after the switch): codes of the new bytes under it."""
    n = 0
    for batch in batches:
        tok_rows, cen_rows, values = [], [], []
        for key, blob, n_raw, model, rev, h, _v, layout in batch:
            new, stored, raw, pooled_bin, cents = _encode(spec, shadow, repool, blob, n_raw)
            kv = shadow.key_value(key)
            # the layout numbers raw tokens: it goes with rows stored unpooled only
            lay = None if layout is None or len(stored) != raw else bytes(layout)
            tok_rows.append((kv, new, len(stored), raw, pooled_bin, model, rev, None if h is None else bytes(h), lay))
            values.append(stored)
            if cents is not None:
                cen_rows.extend((kv, c, encode_halfvec(vec)) for c, vec in enumerate(cents))
        if book is not None:   # the batch's codes in few assign calls, not one per row (~3x faster)
            tok_rows = [row + (codes.tolist(),) for row, codes in zip(tok_rows, fs.distinct_codes(book.cb, values))]
        keys = [str(r[0]) for r in batch]
        # the one write path (its stage tables when the caller is not the schema owner)
        writes._write(conn, shadow, keys, lambda _index, t=tok_rows, c=cen_rows: (t, c), book=book)
        n += len(batch)
    return n


def retier(conn: psycopg.Connection[Any], name: str, *, storage_tier: str | None = None,
           pool_factor: int | None = None) -> Retiered:
    """Switch index ``name`` to ``storage_tier`` / ``pool_factor`` (None: keep) from its stored tokens.

    ``conn`` must be in autocommit mode: each copied batch commits on its own, so writers and
    searches go on while the shadow is filled, and only the switch holds locks.
    """
    if not conn.autocommit:
        raise PgmaxsimError("changing an index's storage needs an autocommit connection (each step commits)")

    spec = get_index(conn, name)
    new_storage = spec.storage if storage_tier is None else storage_tier
    new_factor = spec.pool_factor if pool_factor is None else pool_factor
    repool = plan(spec.storage, spec.pool_factor, new_storage, new_factor)
    if name.endswith(SUFFIX):
        raise PgmaxsimError(f"index {name!r} is itself a storage switch in progress")
    busy = conn.execute("SELECT 1 FROM maxsim.reembeds() WHERE index_id = %s", (spec.id,)).fetchone()
    if busy:
        raise PgmaxsimError(f"index {name!r} is being re-embedded; change its storage after that switched over")
    shadow_name = name + SUFFIX
    if conn.execute("SELECT 1 FROM maxsim.list_indexes() WHERE name = %s", (shadow_name,)).fetchone():
        conn.execute("SELECT maxsim.drop_index(%s)", (shadow_name,))   # left by an interrupted switch
    opts = dict(spec.options)
    opts.update(storage=new_storage, pool_factor=new_factor, pooling=spec.pooling)
    opts.pop("fs_due", None)   # the shadow is never trained: its rows are coded under the index's codebook
    before = _bytes(conn, spec)
    conn.execute("SELECT maxsim.create_index(%s, %s::regclass, %s, dim => %s, options => %s)",
                 (shadow_name, spec.source, spec.id_column, spec.dim, psycopg.types.json.Jsonb(opts)))
    shadow = get_index(conn, shadow_name)
    # A codebook first stage stays the main index's (its codebook tables are not swapped): the
    # shadow's rows get their codes under it.
    book = codebook.live(conn, spec)
    try:
        snap = conn.execute(SNAPSHOT).fetchone()[0]
        _copy(conn, spec, shadow, repool, _all_rows(conn, spec), book)
        for _ in range(3):   # catch up while writers go on
            prev, snap = snap, conn.execute(SNAPSHOT).fetchone()[0]
            if _copy(conn, spec, shadow, repool, _changed_rows(conn, spec, prev), book) < BATCH:
                break
        with conn.transaction():
            _switch(conn, spec, shadow, repool, snap, book)
        # The shadow (now holding the old tables) goes in its own transaction: dropping its
        # triggers locks the source table, which a writer deleting source rows holds while it
        # waits for the token table; inside the switch that would be a deadlock.
        conn.execute("SELECT maxsim.drop_index(%s)", (shadow_name,))
    except BaseException:
        if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            conn.execute("SELECT maxsim.drop_index(%s)", (shadow_name,))
        raise
    after = get_index(conn, name)
    info = conn.execute("SELECT rows, bytes FROM maxsim.index_info(%s)", (name,)).fetchone()
    return Retiered(name, int(info[0] or 0), after.storage, after.pool_factor, before, int(info[1] or 0))


def _switch(conn: psycopg.Connection[Any], spec: IndexSpec, shadow: IndexSpec, repool: bool, snap: str,
            book: codebook.Live | None = None) -> None:
    # writers wait from here on (readers go on; every writer that started has committed once the
    # lock is granted): the last changes; then maxsim.switch_index drops the rows deleted meanwhile,
    # swaps the tables and options and tells the scorer (sql/idempotent/045_switch.sql)
    conn.execute("SELECT maxsim.switch_lock(%s)", (spec.name,))
    if codebook.gen_of(get_index(conn, spec.name)) != (None if book is None else book.gen):
        raise PgmaxsimError(f"the first stage of {spec.name!r} was retrained during the storage switch; run it again")
    _copy(conn, spec, shadow, repool, _changed_rows(conn, spec, snap), book)
    row = conn.execute("SELECT maxsim.switch_index(%s, %s)", (spec.name, shadow.name)).fetchone()
    if not (row and row[0]):
        raise PgmaxsimError(f"index {spec.name!r} could not be switched to its new storage (switched meanwhile?)")

"""A scorer on a Citus node: it holds the token shards placed on its node.

A distributed index's token table ``maxsim.tok_N`` is split into shards (``maxsim.tok_N_<shardid>``)
spread over the worker nodes (sql/idempotent/085_citus.sql). ``pgmaxsim scorer --dsn <a node's
database>`` holds, besides the node's own indexes (none on a worker: the registry is a coordinator
table), every token shard whose placement is on that node, one :class:`.store.IndexStore` per
shard, keyed by the shard's name (``maxsim.tok_3_102012``). Shard backends of that node ask it
(``maxsim._citus_shard_score``, :mod:`pgmaxsim.plpy.shards`) with ``{"op": "score", "shard": NAME}``.

What it reads, all on its own node (Citus keeps the metadata on every node):

- which shards are here: ``pg_dist_placement`` rows of this node's group
  (``pg_dist_local_group``) for the hash-distributed tables ``maxsim.tok_N``;
- each shard's dim (the ``pooled`` halfvec's typmod), key type, and its rows: the tier of a
  shard's tokens is read from a row's byte length (:func:`pgmaxsim.plpy.api.row_storage`).

How it stays current: a shard writes no change log (its triggers may touch only colocated
shards, and a node-local log would need tables on every node that Citus does not create), so
every sync reads each shard's ``(id, version)`` pairs (no tokens: they are TOASTed out of the
row) in one snapshot and fetches the tokens of rows whose version it does not hold; ids it
holds that are gone are dropped. Versions come from ``maxsim.version_seq``, which Citus gives a
range of its own on every node (group << 48), so a version names one write cluster-wide.

Why that is enough for exact scores: a shard backend reads its candidates' ``(id, version)`` in
its own snapshot and the scorer scores only rows it holds at exactly that version; the backend
scores the others itself. A scorer behind the table costs CPU, never a wrong score.

Shard moves (``citus_rebalance_start``): when a placement leaves this node the shard is dropped on
the next sync; a shard that arrived is loaded whole. Until then its backends score on the CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from pgmaxsim.registry import IndexSpec
from pgmaxsim.scorer.protocol import Snapshot
from pgmaxsim.scorer.store import IndexStore, Row

log = logging.getLogger("pgmaxsim.scorer")

FETCH_ROWS = 256
#: A shard whose file (``pg_relation_filenode``: TRUNCATE changes it) and write counters
#: (``pg_stat_get_tuples_inserted/updated/deleted``) are unchanged is not scanned again for up to this
#: many seconds. The counters move when the writing backend reports its statistics: after its
#: commit (so a scan they trigger sees the write), within about a second and at most ~10 s later
#: (PostgreSQL 15 flushes an idle backend's statistics at least that often); the periodic scan
#: covers lost counters (a statistics reset, a crash). Until then the shard's backends score
#: the changed rows themselves (the version check), so this bounds staleness, not correctness.
RESCAN_S = 30.0

#: (citus installed here, the pgmaxsim registry is on this node)
PROBE_SQL = ("SELECT pg_catalog.to_regclass('pg_catalog.pg_dist_local_group') IS NOT NULL,"
             " pg_catalog.to_regclass('maxsim.indexes') IS NOT NULL")

#: The token shards placed on this node: name, key type, dim.
LOCAL_SHARDS_SQL = """
SELECT pg_catalog.shard_name(p.logicalrelid, s.shardid) AS shard, s.shardid, p.logicalrelid::text AS logical,
       pg_catalog.format_type(k.atttypid, NULL) AS id_type, v.atttypmod AS dim,
       (SELECT pg_catalog.pg_relation_filenode(x.o)::text || ':' || (pg_catalog.pg_stat_get_tuples_inserted(x.o)
               + pg_catalog.pg_stat_get_tuples_updated(x.o) + pg_catalog.pg_stat_get_tuples_deleted(x.o))::text
          FROM (SELECT pg_catalog.to_regclass(pg_catalog.shard_name(p.logicalrelid, s.shardid))::oid AS o) x) AS writes
  FROM pg_catalog.pg_dist_partition p
  JOIN pg_catalog.pg_class c ON c.oid = p.logicalrelid
  JOIN pg_catalog.pg_dist_shard s ON s.logicalrelid = p.logicalrelid
  JOIN pg_catalog.pg_dist_placement pl ON pl.shardid = s.shardid
  JOIN pg_catalog.pg_attribute k ON k.attrelid = p.logicalrelid AND k.attname = 'id' AND NOT k.attisdropped
  JOIN pg_catalog.pg_attribute v ON v.attrelid = p.logicalrelid AND v.attname = 'pooled' AND NOT v.attisdropped
 WHERE p.partmethod = 'h' AND c.relnamespace = 'maxsim'::regnamespace AND c.relname ~ '^tok_[0-9]+$'
   AND pl.groupid = (SELECT g.groupid FROM pg_catalog.pg_dist_local_group g) AND pl.shardstate = 1
   AND pg_catalog.to_regclass(pg_catalog.shard_name(p.logicalrelid, s.shardid)) IS NOT NULL
 ORDER BY s.shardid
"""

#: Ids of the registry's indexes whose token table is distributed (on the coordinator): a
#: coordinator's scorer does not load those (their rows are on the workers, and their shards
#: write no change log the registry sync could follow).
DISTRIBUTED_INDEXES_SQL = """
SELECT i.id FROM maxsim.indexes i
  JOIN pg_catalog.pg_dist_partition p
    ON p.logicalrelid = pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', i.token_table))
"""


@dataclass(frozen=True)
class Shard:
    name: str        # regclass text, quoted by the server: maxsim.tok_3_102012
    shardid: int
    logical: str     # maxsim.tok_3
    id_type: str     # format_type output
    dim: int
    writes: str      # the shard's file and write counters (see RESCAN_S)


def probe(conn: Any) -> tuple[bool, bool]:
    """(Citus is installed in this database, the pgmaxsim registry is here)."""
    citus, registry = conn.execute(PROBE_SQL).fetchone()
    return bool(citus), bool(registry)


def distributed_index_ids(conn: Any) -> set[int]:
    return {int(r[0]) for r in conn.execute(DISTRIBUTED_INDEXES_SQL).fetchall()}


def local_shards(conn: Any) -> dict[str, Shard]:
    return {r[0]: Shard(r[0], int(r[1]), r[2], r[3], int(r[4]), str(r[5]))
            for r in conn.execute(LOCAL_SHARDS_SQL).fetchall()}


def _spec(shard: Shard, storage: str) -> IndexSpec:
    schema, _, table = shard.name.partition(".")
    return IndexSpec(id=shard.shardid, name=shard.name, source=None, source_schema=None, source_table=None,
                     id_column="id", id_type=shard.id_type, text_column=None, image_column=None, model=None,
                     model_revision=None, dim=shard.dim, pooling="mean", options={"storage": storage},
                     token_table=table)


def _tier(nbytes: int, n_tokens: int, dim: int) -> str:
    from pgmaxsim.plpy.api import row_storage

    return row_storage(nbytes, n_tokens, dim, "fp16")


def _decode(records: list[tuple[str, int, bytes, int]], meta: IndexSpec) -> list[Row]:
    """Stored bytes -> rows as stored (the tier read from each row's length)."""
    from pgmaxsim.kernels import quantize

    out = []
    for rid, version, blob, n in records:
        blob = bytes(blob)
        tokens, scales = quantize.decode_tokens(blob, meta.dim, _tier(len(blob), int(n), meta.dim))
        out.append(Row(rid, int(version), tokens.copy(), None if scales is None else scales.copy()))
    return out


def _fetch(conn: Any, shard: Shard, meta: IndexSpec, ids: list[str] | None) -> Iterator[list[Row]]:
    """The shard's rows (``ids``: only those), a batch at a time."""
    table = sql.SQL(shard.name)   # regclass output of shard_name(): quoted by the server
    q = sql.SQL("SELECT t.id::text, t.version, t.tokens, t.n_tokens FROM {} t").format(table)
    if ids is None:
        with conn.cursor(name=f"pgmaxsim_shard_{shard.shardid}", binary=True) as cur:
            cur.itersize = FETCH_ROWS
            cur.execute(q)
            while batch := cur.fetchmany(FETCH_ROWS):
                yield _decode(batch, meta)
        return
    where = q + sql.SQL(" WHERE t.id = ANY(%s::text[]::{}[])").format(sql.SQL(shard.id_type))
    for i in range(0, len(ids), FETCH_ROWS):
        with conn.cursor(binary=True) as cur:
            yield _decode(cur.execute(where, (ids[i: i + FETCH_ROWS],)).fetchall(), meta)


def sync_shards(stores: dict[str, IndexStore], conn: Any, backend: Any, journal_seconds: float,
                marks: dict[str, tuple[str, float]] | None = None) -> None:
    """Make ``stores`` hold exactly this node's token shards at one snapshot (see the module doc).

    ``marks`` (kept by the caller between syncs): a shard whose file and write counters have not
    moved since its last scan is not scanned again for up to :data:`RESCAN_S` (None: scan every
    shard every time)."""
    here = local_shards(conn)   # before the snapshot: a write these counters include is visible in it
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snap = Snapshot.parse(conn.execute("SELECT pg_catalog.pg_current_snapshot()::text").fetchone()[0])
        for name in [n for n in stores if n not in here]:
            log.info("scorer: shard %s left this node: dropped", name)
            stores.pop(name).release()
        now = time.monotonic()
        for name in [n for n in (marks or {}) if n not in stores]:
            del marks[name]   # type: ignore[union-attr]
        for name, shard in here.items():
            mark = marks.get(name) if marks is not None else None
            if name in stores and mark is not None and mark[0] == shard.writes and now - mark[1] < RESCAN_S:
                continue
            if marks is not None:
                marks[name] = (shard.writes, now)
            held = conn.execute(sql.SQL("SELECT t.id::text, t.version, pg_catalog.octet_length(t.tokens),"
                                        " t.n_tokens FROM {} t").format(sql.SQL(shard.name))).fetchall()
            store = stores.get(name)
            tier = _tier(int(held[0][2]), int(held[0][3]), shard.dim) if held else None
            if store is not None and (store.meta.dim != shard.dim or (tier and store.rows == 0
                                                                       and store.meta.storage != tier)):
                stores.pop(name).release()
                store = None
            if store is None:
                store = IndexStore(_spec(shard, tier or "fp16"), backend, journal_seconds=journal_seconds)
                for batch in _fetch(conn, shard, store.meta, None):
                    store.apply(batch, (), snap, initial=True)
                store.apply((), (), snap, initial=True)
                store.state = "ready"
                stores[name] = store
                log.info("scorer: shard %s loaded (%d rows, %d tokens)", name, store.rows, store.tokens)
                continue
            versions = store.versions
            changed = [rid for rid, v, _n, _t in held
                       if (slot := store.slot_of.get(rid)) is None or int(versions[slot]) != int(v)]
            present = {r[0] for r in held}
            gone = [rid for rid in store.slot_of if rid not in present]
            rows = [r for batch in _fetch(conn, shard, store.meta, changed) for r in batch] if changed else []
            store.apply(rows, gone, snap)

"""Keep an :class:`IndexStore` equal to its token table at a recent snapshot.

Each sync is one REPEATABLE READ, READ ONLY transaction with snapshot ``P'``:

1. ``P' = pg_current_snapshot()`` (exact on a standby too: :data:`.protocol.SNAPSHOT_SQL`);
2. the changes the previous watermark ``P`` did not see:
   ``maxsim.changes WHERE index_id = $1 AND xid >= xmin(P) AND NOT
   pg_visible_in_snapshot(xid, P)`` (visible in ``P'`` by MVCC);
3. those rows' current state (``id = ANY(...)``): present = upsert, absent = delete;
4. the store moves to watermark ``P'`` and journals ``(xid, row_id)``.

So the store always equals the table at its watermark, whatever the commit
order of the writers. A truncate (row_id NULL) reloads the index.

Lag: a sync starts on every ``NOTIFY maxsim_changes`` (sent by the token
tables' triggers at commit) and at least every ``poll_interval`` seconds; a
change is visible to the scorer one sync after its commit (typically a few ms
after it, at most ``poll_interval`` + one sync if the notification is lost).
Callers never see stale scores: rows the scorer has not synced are scored by
them (see :mod:`pgmaxsim.plpy.remote`).
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from pgmaxsim.kernels import quantize
from pgmaxsim.registry import IndexSpec, all_indexes
from pgmaxsim.scorer.protocol import SNAPSHOT_SQL, Snapshot
from pgmaxsim.scorer.store import IndexStore, Row

FETCH_ROWS = 256
CHANGES_SQL = (
    "SELECT row_id, xid::text FROM maxsim.changes WHERE index_id = %s"
    " AND xid >= pg_catalog.pg_snapshot_xmin(%s::pg_snapshot)"
    " AND NOT pg_catalog.pg_visible_in_snapshot(xid, %s::pg_snapshot)"
)


def registry(conn: Any, names: list[str] | None = None) -> dict[int, IndexSpec]:
    """The indexes in ``maxsim.indexes`` (optionally only ``names``)."""
    return {s.id: s for s in all_indexes(conn, names)}


def _begin(conn: Any) -> Snapshot:
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    return Snapshot.parse(conn.execute(SNAPSHOT_SQL).fetchone()[0])


def _select(meta: IndexSpec, where: sql.Composable | None = None) -> sql.Composed:
    q = sql.SQL("SELECT t.id::text, t.version, t.tokens FROM {} t").format(
        sql.Identifier("maxsim", meta.token_table))
    return q if where is None else q + sql.SQL(" ") + where


def _rows(records: list[tuple[str, int, bytes]], meta: IndexSpec) -> list[Row]:
    """Stored bytes -> rows as stored: fp16, or int8 codes with their scales (the store
    keeps an int8 index as int8, on the CPU and on the GPU, never re-quantized)."""
    out = []
    for rid, version, blob in records:
        tokens, scales = quantize.decode_tokens(bytes(blob), meta.dim, meta.storage)
        out.append(Row(rid, int(version), tokens.copy(), None if scales is None else scales.copy()))
    return out


def load(conn: Any, store: IndexStore) -> None:
    """Initial load of the whole token table (server-side cursor, binary)."""
    with conn.transaction():
        snap = _begin(conn)
        with conn.cursor(name=f"pgmaxsim_load_{store.meta.id}", binary=True) as cur:
            cur.itersize = FETCH_ROWS
            cur.execute(_select(store.meta))
            while True:
                batch = cur.fetchmany(FETCH_ROWS)
                if not batch:
                    break
                store.apply(_rows(batch, store.meta), (), snap, initial=True)
        store.apply((), (), snap, initial=True)
    store.state = "ready"


def catch_up(conn: Any, store: IndexStore) -> str:
    """One sync; returns ``"ok"`` or ``"reload"`` (the table was truncated)."""
    assert store.watermark is not None
    old = store.watermark.text()
    with conn.transaction():
        snap = _begin(conn)
        changes = conn.execute(CHANGES_SQL, (store.meta.id, old, old)).fetchall()
        if any(rid is None for rid, _ in changes):
            return "reload"
        ids = list(dict.fromkeys(rid for rid, _ in changes))
        rows: list[Row] = []
        where = sql.SQL("WHERE t.id = ANY(%s::text[]::{}[])").format(sql.SQL(store.meta.id_type))
        for i in range(0, len(ids), FETCH_ROWS):
            part = ids[i: i + FETCH_ROWS]
            with conn.cursor(binary=True) as cur:
                rows.extend(_rows(cur.execute(_select(store.meta, where), (part,)).fetchall(), store.meta))
        present = {r.id for r in rows}
        store.apply(rows, [i for i in ids if i not in present], snap,
                    journal=[(int(x), rid) for rid, x in changes])
    return "ok"

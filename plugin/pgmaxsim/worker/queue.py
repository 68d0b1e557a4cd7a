"""The work queue: claim, dequeue, retry with backoff, move to ``maxsim.failed``.

Every function here runs inside the caller's transaction: the worker claims a
batch, encodes it, writes the embeddings and dequeues in ONE transaction, so
a crash at any point leaves the queue exactly as it was (the claim's row
locks vanish with the connection) and a commit makes the write and the
dequeue visible together.

The queue's tables belong to the schema owner: every step goes through the SQL entry points
of sql/idempotent/055_queue.sql (``maxsim.queue_claim``, ``queue_settle``, ``queue_state``, ``queue_totals``),
which check that this role may manage the index, so a worker runs as the owner of the source
table (or an admin) and needs no right on pgmaxsim's tables.

Claims use ``FOR UPDATE SKIP LOCKED`` so concurrent workers take disjoint
queue entries. The queue may hold several entries for one source row (a row
changed while a worker encoded it is queued again, on purpose); a
transaction-scoped advisory lock per (index, row) (``writes.row_lock_key``, the lock every
writer takes) makes sure two workers
never encode the same row at the same time even when they claimed two
different entries of it. An entry whose row is busy elsewhere is left in the
queue and handled later (the content hash then skips it when nothing changed).

A claim is sized by a row count *and* a token budget: the claim query
estimates each row's cost from the source (text length / 4, or a per-image
token cost), and a batch stops before the budget is exceeded (a single row
over budget still forms a batch on its own).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgmaxsim.registry import IndexSpec
from pgmaxsim.writes import delete_keys, row_lock_key

DEFAULT_BATCH_SIZE = 256  # rows; the token budget is what bounds batches of images or long texts
DEFAULT_TOKEN_BUDGET = 32_768
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RETRY_BASE_S = 10.0  # attempt k waits base * 4**(k-1): 10 s, 40 s, 160 s, ...
MAX_RETRY_DELAY_S = 3600.0


@dataclass
class Claimed:
    """One source row of a batch and every queue entry claimed for it."""

    row_id: str
    qids: list[int] = field(default_factory=list)
    attempts: int = 0
    cost: int = 1


def _cost_sql(spec: IndexSpec) -> sql.Composable:
    """SQL estimate of a row's token cost from the joined source row ``s``."""
    parts: list[sql.Composable] = []
    if spec.image_column:
        parts.append(sql.SQL("CASE WHEN s.{} IS NOT NULL THEN {} END").format(
            sql.Identifier(spec.image_column), sql.Literal(spec.image_cost)))
    if spec.text_column:
        parts.append(sql.SQL("octet_length(s.{}::text) / 4 + 2").format(sql.Identifier(spec.text_column)))
    parts.append(sql.Literal(1))
    return sql.SQL("coalesce({})").format(sql.SQL(", ").join(parts))


def claim(
    conn: psycopg.Connection[Any],
    spec: IndexSpec,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
) -> list[Claimed]:
    """Lock up to ``batch_size`` ready rows of ``spec`` within ``token_budget``, grouped by row.

    Must run inside a transaction; the locks last until it ends. Rows another
    worker is encoding right now are left out (their entries stay queued).
    """
    costs = sql.SQL(
        "SELECT u.r, {cost} FROM unnest(%s::text[]) WITH ORDINALITY AS u(r, o)"
        " LEFT JOIN {src} s ON s.{id} = CAST(u.r AS {typ}) ORDER BY u.o"
    ).format(cost=_cost_sql(spec), src=spec.source_ident(), id=sql.Identifier(spec.id_column),
             typ=spec.id_type_sql())
    # Peek inside a savepoint: when the budget cuts the batch short, rolling the
    # savepoint back releases the locks on the entries we do not keep.
    cut: list[tuple[Any, ...]] | None = None
    with conn.transaction():
        entries = conn.execute("SELECT qid, row_id, attempts FROM maxsim.queue_claim(%s, %s)",
                               (spec.name, batch_size)).fetchall()
        cost = dict(conn.execute(costs, ([e[1] for e in entries],)).fetchall()) if entries else {}
        rows = [(q, rid, att, cost.get(rid, 1)) for q, rid, att in entries]
        keep = within_budget([(r[1], int(r[3] or 1)) for r in rows], batch_size, token_budget)
        if keep < len(rows):
            cut = rows[:keep]
            raise psycopg.Rollback()
    if cut is not None:
        costs_by_qid = {r[0]: r[3] for r in cut}
        relocked = conn.execute("SELECT qid, row_id, attempts FROM maxsim.queue_claim(%s, %s, %s::bigint[])",
                                (spec.name, len(cut), [r[0] for r in cut])).fetchall()
        rows = [(q, rid, att, costs_by_qid.get(q, 1)) for q, rid, att in relocked]
    return _group_and_lock(conn, spec, rows)


def within_budget(rows: list[tuple[str, int]], batch_size: int, token_budget: int) -> int:
    """How many leading ``(row_id, cost)`` fit ``batch_size`` distinct rows and ``token_budget``.

    A row's cost counts once however many entries it has; the first row is
    always taken.

    >>> within_budget([("a", 10), ("b", 10), ("a", 10), ("c", 10)], 8, 20)
    3
    >>> within_budget([("a", 10), ("b", 10), ("c", 10)], 2, 1000)
    2
    >>> within_budget([("a", 5000)], 8, 100)
    1
    """
    seen: set[str] = set()
    total = 0
    for i, (rid, cost) in enumerate(rows):
        if rid in seen:
            continue
        if seen and (len(seen) >= batch_size or total + cost > token_budget):
            return i
        seen.add(rid)
        total += max(1, cost)
    return len(rows)


def _group_and_lock(conn: psycopg.Connection[Any], spec: IndexSpec, rows: list[tuple[Any, ...]]) -> list[Claimed]:
    by_row: dict[str, Claimed] = {}
    for qid, rid, attempts, cost in rows:
        c = by_row.setdefault(rid, Claimed(rid, cost=int(cost or 1)))
        c.qids.append(int(qid))
        c.attempts = max(c.attempts, int(attempts))
    if not by_row:
        return []
    ids = list(by_row)
    got = conn.execute(
        # unnest of two arrays is FROM-clause syntax: it cannot be schema-qualified
        "SELECT r, pg_catalog.pg_try_advisory_xact_lock(k)"
        " FROM unnest(%s::text[], %s::bigint[]) WITH ORDINALITY AS u(r, k, o) ORDER BY o",
        (ids, [row_lock_key(spec.id, r) for r in ids])).fetchall()
    free = {r for r, ok in got if ok}
    return [by_row[r] for r in ids if r in free]


def dequeue(conn: psycopg.Connection[Any], spec: IndexSpec, rows: list[Claimed]) -> None:
    """Delete the claimed entries of ``rows`` (done, skipped or gone) and clear their old failures."""
    if not rows:
        return
    _settle(conn, spec, "done", [q for r in rows for q in r.qids], [r.row_id for r in rows])


def _settle(conn: psycopg.Connection[Any], spec: IndexSpec, outcome: str, qids: list[int] | None,
            row_ids: list[str] | None, *extra: Any) -> None:
    conn.execute("SELECT maxsim.queue_settle(%s, %s, %s::bigint[], %s::text[], %s::integer, %s::text, %s::text,"
                 " %s::double precision)",
                 (spec.name, outcome, qids, row_ids, *(extra + (None,) * (4 - len(extra)))))


def retry_delay(attempts: int, base: float = DEFAULT_RETRY_BASE_S) -> float:
    """Seconds to wait after the ``attempts``-th failure: base * 4**(attempts-1), capped, with jitter."""
    delay = min(MAX_RETRY_DELAY_S, base * 4 ** max(0, attempts - 1))
    return delay * (1.0 + 0.1 * random.random())


@dataclass
class Failure:
    row: Claimed
    step: str  # "load", "encode" or "write"
    error: str
    permanent: bool = False


def record_failures(
    conn: psycopg.Connection[Any],
    spec: IndexSpec,
    failures: list[Failure],
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    retry_base: float = DEFAULT_RETRY_BASE_S,
) -> tuple[int, int]:
    """Count an attempt for each failed row: back off, or move it to ``maxsim.failed``.

    A row moves to ``maxsim.failed`` (with the step and the error text) when
    its attempts reach ``max_attempts`` or its error is permanent; its queue
    entries are deleted and any embeddings of older content are removed, so
    search never returns a row for content that could not be embedded.
    Returns ``(retried, failed)``.
    """
    retried = failed = 0
    gone: list[str] = []
    for f in failures:
        attempts = f.row.attempts + 1
        error = f.error.strip().splitlines()[0][:2000] if f.error.strip() else "unknown error"
        if f.permanent or attempts >= max_attempts:
            _settle(conn, spec, "failed", f.row.qids, [f.row.row_id], attempts, f.step, error)
            gone.append(f.row.row_id)
            failed += 1
        else:
            _settle(conn, spec, "retry", f.row.qids, None, attempts, f.step, error, retry_delay(attempts, retry_base))
            retried += 1
    if gone:
        delete_embeddings(conn, spec, gone)
    return retried, failed


def delete_embeddings(conn: psycopg.Connection[Any], spec: IndexSpec, row_ids: list[str]) -> None:
    """Remove the token rows of ``row_ids`` (rows gone from the source, or permanently failed)."""
    delete_keys(conn, spec, row_ids)


def prune_failed(conn: psycopg.Connection[Any], spec: IndexSpec) -> int:
    """Forget failures of rows that are no longer in the source (deleted, truncated, key changed)."""
    failed = state(conn, spec).failed_ids
    if not failed:
        return 0
    present = {r[0] for r in conn.execute(
        sql.SQL("SELECT s.{id}::text FROM {src} s WHERE s.{id} = ANY(CAST(%s AS {typ}[]))").format(
            src=spec.source_ident(), id=sql.Identifier(spec.id_column), typ=spec.id_type_sql()), (failed,))}
    gone = [r for r in failed if r not in present]
    if gone:
        _settle(conn, spec, "forget", None, gone)
    return len(gone)


@dataclass
class QueueState:
    """What ``maxsim.queue_state`` tells a worker about one index."""

    queued: int
    due_in: float | None       # seconds until the earliest backed-off entry is due
    retrying: int              # rows waiting for a retry
    failed_ids: list[str]
    hashes: dict[str, bytes]   # stored content hashes of the rows asked about


def state(conn: psycopg.Connection[Any], spec: IndexSpec, hash_ids: list[str] | None = None) -> QueueState:
    row = conn.execute("SELECT * FROM maxsim.queue_state(%s, %s::text[])", (spec.name, hash_ids)).fetchone()
    assert row is not None
    queued, due_in, retrying, failed_ids, keys, hashes = row
    return QueueState(int(queued), None if due_in is None else float(due_in), int(retrying), list(failed_ids or []),
                      {k: bytes(h) for k, h in zip(keys or [], hashes or [])})


@dataclass
class QueueTotals:
    """What ``maxsim.queue_totals`` tells a worker about the indexes it serves, summed."""

    queued: int                # entries queued
    due_in: float | None       # seconds until the earliest backed-off entry is due
    retrying: int              # rows waiting for a retry


def totals(conn: psycopg.Connection[Any], specs: list[IndexSpec]) -> QueueTotals:
    """The queue counts of ``specs``, in one statement (not one per index)."""
    if not specs:
        return QueueTotals(0, None, 0)
    rows = conn.execute("SELECT queued, due_in, retrying FROM maxsim.queue_totals(%s::text[])",
                        ([s.name for s in specs],)).fetchall()
    dues = [float(r[1]) for r in rows if r[1] is not None]
    return QueueTotals(sum(int(r[0]) for r in rows), min(dues) if dues else None, sum(int(r[2]) for r in rows))


def pending(conn: psycopg.Connection[Any], specs: list[IndexSpec]) -> tuple[int, float | None]:
    """``(entries queued, seconds until the earliest backed-off entry is due or None)``."""
    t = totals(conn, specs)
    return t.queued, t.due_in

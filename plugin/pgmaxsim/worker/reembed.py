"""Re-embed an index under a new model or revision, alongside the old one, then switch over.

Design (no window where search returns nothing):

1. :func:`start_reembed` creates a *shadow* index ``<name>#reembed`` with
   ``maxsim.create_index`` on the same source and columns with the new model
   (its own token table, pooled ANN, change-capture triggers, and a backfill of
   every source row into the queue) and records the pair in
   ``maxsim.reembeds``. Searches keep using the old index meanwhile; changes to
   the source are queued for both, so the shadow stays current. The shadow is
   an ordinary index: it can be searched to compare models before the switch.
2. Workers embed the shadow's queue like any other index. When it is empty,
   :func:`finish_ready` (called by idle workers) switches over in ONE
   transaction: it takes ACCESS EXCLUSIVE locks on both token tables (waiting
   for in-flight writes; searches wait the few milliseconds of the swap, they
   never see an empty index), re-checks that the shadow's queue is empty,
   swaps the two indexes' storage by renaming their tables (token, centroid)
   and indexes, re-points the token tables' triggers at their new index id,
   swaps model/revision/dim/pooling/options in the registry, moves the
   shadow's failures over, tells the scorer (``maxsim.changes``: the index was
   emptied, then every row written), and drops the shadow (now holding the old
   embeddings) with ``maxsim.drop_index``.
3. :func:`cancel_reembed` drops the shadow; dropping the index drops its
   shadow too (a trigger on ``maxsim.indexes``).

The queue entries the old index still had at the switch are processed under
the new model; the content hash makes each one a no-op when the shadow
already embedded that content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pgmaxsim.encoders.registry import model_dim
from pgmaxsim.errors import PgmaxsimError

SHADOW_SUFFIX = "#reembed"


@dataclass
class Reembed:
    index: str
    shadow: str
    index_id: int
    shadow_id: int
    model: str
    model_revision: str | None
    rows: int
    pending: int
    failed: int


def shadow_name(name: str) -> str:
    return name[: 200 - len(SHADOW_SUFFIX)] + SHADOW_SUFFIX


def may_reembed(conn: psycopg.Connection[Any]) -> bool:
    """Whether this session runs re-embeddings: they rebuild and swap pgmaxsim's own tables, so
    they need the schema owner (a worker running as a granted role leaves them to one that is)."""
    row = conn.execute("SELECT pg_catalog.has_table_privilege('maxsim.reembeds', 'UPDATE')").fetchone()
    return bool(row and row[0])


def shadow_ids_of(conn: psycopg.Connection[Any], index_ids: list[int]) -> list[int]:
    """Shadow index ids of re-embeddings in progress for ``index_ids``."""
    if not index_ids or not may_reembed(conn):
        return []
    rows = conn.execute("SELECT shadow_id FROM maxsim.reembeds WHERE index_id = ANY(%s)", (index_ids,))
    return [r[0] for r in rows.fetchall()]


def start_reembed(
    conn: psycopg.Connection[Any],
    name: str,
    model: str,
    *,
    revision: str | None = None,
    dim: int | None = None,
) -> Reembed:
    """Begin re-embedding index ``name`` under ``model`` (and ``revision``); returns its state.

    ``dim``: the new model's embedding size; when None it is taken from
    ``maxsim.create_index``'s table of known models, else by loading the model.
    """
    row = conn.execute(
        "SELECT i.id, i.source::regclass::oid, i.id_column, i.text_column, i.image_column, i.model, i.pooling,"
        " i.options, i.model_revision, r.shadow_id FROM maxsim.indexes i"
        " LEFT JOIN maxsim.reembeds r ON r.index_id = i.id WHERE i.name = %s", (name,)).fetchone()
    if row is None:
        raise PgmaxsimError(f"index {name!r} does not exist")
    index_id, source, id_col, text_col, image_col, old_model, pooling, options, old_rev, busy = row
    if busy is not None:
        raise PgmaxsimError(f"index {name!r} is already being re-embedded (pgmaxsim worker --cancel-reembed {name})")
    if old_model is None:
        raise PgmaxsimError(f"index {name!r} has no model (its embeddings come from the application)")
    if name.endswith(SHADOW_SUFFIX):
        raise PgmaxsimError(f"index {name!r} is itself a re-embedding shadow")
    if old_model == model and (old_rev or None) == (revision or None):
        raise PgmaxsimError(f"index {name!r} already uses model {model!r}"
                            + (f" revision {revision!r}" if revision else ""))
    if dim is None:
        dim = model_dim(model, revision)
    opts = dict(options or {})
    opts["pooling"] = pooling
    shadow = shadow_name(name)
    with conn.transaction():
        created = conn.execute(
            "SELECT maxsim.create_index(%s, %s::oid::regclass, %s, %s, %s, %s, %s, %s::jsonb)",
            (shadow, source, id_col, text_col, image_col, model, dim, json.dumps(opts))).fetchone()
        assert created is not None
        shadow_id = created[0]
        conn.execute("UPDATE maxsim.indexes SET model_revision = %s WHERE id = %s", (revision, shadow_id))
        conn.execute("INSERT INTO maxsim.reembeds (index_id, shadow_id) VALUES (%s, %s)", (index_id, shadow_id))
    state = reembed_status(conn, name)
    assert state is not None
    return state


def reembed_status(conn: psycopg.Connection[Any], name: str) -> Reembed | None:
    row = conn.execute(
        "SELECT i.name, s.name, i.id, s.id, s.model, s.model_revision, s.token_table,"
        " (SELECT count(*) FROM maxsim.queue q WHERE q.index_id = s.id),"
        " (SELECT count(*) FROM maxsim.failed f WHERE f.index_id = s.id)"
        " FROM maxsim.reembeds r JOIN maxsim.indexes i ON i.id = r.index_id"
        " JOIN maxsim.indexes s ON s.id = r.shadow_id WHERE i.name = %s", (name,)).fetchone()
    if row is None:
        return None
    rows = conn.execute(sql.SQL("SELECT count(*) FROM maxsim.{}").format(sql.Identifier(row[6]))).fetchone()
    return Reembed(row[0], row[1], row[2], row[3], row[4], row[5], int(rows[0]) if rows else 0,
                   int(row[7]), int(row[8]))


def cancel_reembed(conn: psycopg.Connection[Any], name: str) -> bool:
    """Abandon a re-embedding in progress (drops the shadow); False when there was none."""
    state = reembed_status(conn, name)
    if state is None:
        return False
    with conn.transaction():
        conn.execute("DELETE FROM maxsim.reembeds WHERE index_id = %s", (state.index_id,))
        conn.execute("SELECT maxsim.drop_index(%s)", (state.shadow,))
    return True


def finish_ready(conn: psycopg.Connection[Any], specs: list[Any] | None = None) -> list[str]:
    """Switch over every re-embedding whose shadow queue is empty; the names switched.

    ``specs``: only re-embeddings whose shadow is among these indexes (the
    ones this worker serves); None = all.
    """
    if not may_reembed(conn):
        return []
    rows = conn.execute(
        "SELECT r.index_id, r.shadow_id FROM maxsim.reembeds r"
        " WHERE NOT EXISTS (SELECT 1 FROM maxsim.queue q WHERE q.index_id = r.shadow_id)").fetchall()
    served = None if specs is None else {s.id for s in specs}
    done = []
    for index_id, shadow_id in rows:
        if served is not None and shadow_id not in served:
            continue
        name = switch_over(conn, index_id, shadow_id)
        if name:
            done.append(name)
    return done


def switch_over(conn: psycopg.Connection[Any], index_id: int, shadow_id: int) -> str | None:
    """Swap the shadow's storage into index ``index_id`` in one transaction (see module doc).

    Returns the index name, or None when it is not ready (the shadow's queue
    is not empty, or another worker is switching it right now).
    """
    with conn.transaction():
        got = conn.execute(
            "SELECT 1 FROM maxsim.reembeds WHERE index_id = %s AND shadow_id = %s FOR UPDATE SKIP LOCKED",
            (index_id, shadow_id)).fetchone()
        if got is None:
            return None
        regs = {r[0]: r for r in conn.execute(
            "SELECT id, name, token_table FROM maxsim.indexes WHERE id = ANY(%s) FOR UPDATE",
            ([index_id, shadow_id],)).fetchall()}
        main, shadow = regs[index_id], regs[shadow_id]
        tables = [main[2], shadow[2]]
        cen = [f"cen_{index_id}", f"cen_{shadow_id}"]
        existing = {r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'maxsim' AND c.relname = ANY(%s)", (tables + cen,)).fetchall()}
        lock = [t for t in tables + cen if t in existing]
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            sql.SQL(", ").join(sql.Identifier("maxsim", t) for t in lock)))
        left = conn.execute("SELECT count(*) FROM maxsim.queue WHERE index_id = %s", (shadow_id,)).fetchone()
        if left and left[0]:
            raise psycopg.Rollback()
        _swap_names(conn, tables[0], tables[1])
        if cen[0] in existing and cen[1] in existing:
            _swap_names(conn, cen[0], cen[1])
        elif cen[0] in existing or cen[1] in existing:
            raise PgmaxsimError(f"index {main[1]!r} and its re-embedding use different pooling; cannot switch")
        _repoint_triggers(conn, tables[0], shadow_id, index_id)
        _repoint_triggers(conn, tables[1], index_id, shadow_id)
        conn.execute(
            "UPDATE maxsim.indexes m SET model = s.model, model_revision = s.model_revision, dim = s.dim,"
            " pooling = s.pooling, options = s.options FROM maxsim.indexes s"
            " WHERE (m.id, s.id) IN ((%s, %s), (%s, %s))", (index_id, shadow_id, shadow_id, index_id))
        # One statement: the FROM side reads both rows as they were before it (a swap).
        conn.execute("DELETE FROM maxsim.failed WHERE index_id = %s", (index_id,))
        conn.execute("UPDATE maxsim.failed SET index_id = %s WHERE index_id = %s", (index_id, shadow_id))
        conn.execute("INSERT INTO maxsim.changes (index_id, row_id, version, deleted) VALUES (%s, NULL, NULL, true)",
                     (index_id,))
        conn.execute(sql.SQL(
            "INSERT INTO maxsim.changes (index_id, row_id, version, deleted)"
            " SELECT %s, id::text, version, false FROM maxsim.{}").format(sql.Identifier(tables[0])), (index_id,))
        conn.execute("DELETE FROM maxsim.reembeds WHERE index_id = %s", (index_id,))
        conn.execute("SELECT maxsim.drop_index(%s)", (shadow[1],))
        conn.execute("SELECT pg_notify('maxsim_changes', %s)", (str(index_id),))
        return str(main[1])
    return None


def _swap_names(conn: psycopg.Connection[Any], a: str, b: str) -> None:
    """Swap the names of tables ``maxsim.a`` and ``maxsim.b`` and of their indexes/constraints."""

    def children(table: str) -> list[tuple[str, str]]:
        """(kind, name) of the indexes and non-index constraints of ``table`` named after it."""
        rows = conn.execute(
            "SELECT 'i', ic.relname FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class ic ON ic.oid = x.indexrelid"
            " WHERE x.indrelid = %(t)s::regclass"
            " UNION ALL SELECT 'c', con.conname FROM pg_catalog.pg_constraint con"
            " WHERE con.conrelid = %(t)s::regclass AND con.conindid = 0",
            {"t": f"maxsim.{table}"}).fetchall()
        return [(k, n) for k, n in rows if n.startswith(table + "_")]

    def rename(kind: str, table: str, old: str, new: str) -> None:
        if kind == "i":  # renaming a constraint's index renames the constraint too
            stmt = sql.SQL("ALTER INDEX {} RENAME TO {}").format(sql.Identifier("maxsim", old), sql.Identifier(new))
        else:
            stmt = sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                sql.Identifier("maxsim", table), sql.Identifier(old), sql.Identifier(new))
        conn.execute(stmt)

    ca, cb = children(a), children(b)
    for kind, c in ca:
        rename(kind, a, c, "swap_" + c)
    for kind, c in cb:
        rename(kind, b, c, a + c[len(b):])
    for kind, c in ca:
        rename(kind, a, "swap_" + c, b + c[len(a):])
    for old, new in ((a, "swap_" + a), (b, a), ("swap_" + a, b)):
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier("maxsim", old), sql.Identifier(new)))


def _repoint_triggers(conn: psycopg.Connection[Any], table: str, old_id: int, new_id: int) -> None:
    """Re-create the triggers of ``maxsim.<table>`` whose one argument is ``old_id`` with ``new_id``.

    The token tables' triggers (``maxsim._tok_row``/``_tok_truncate``) carry
    their index id as an argument; after the swap it must be the new owner's.
    """
    rows = conn.execute(
        "SELECT t.tgname, pg_catalog.pg_get_triggerdef(t.oid) FROM pg_catalog.pg_trigger t"
        " WHERE t.tgrelid = %s::regclass AND NOT t.tgisinternal AND t.tgnargs = 1",
        (f"maxsim.{table}",)).fetchall()
    suffix = f"('{int(old_id)}')"
    for name, definition in rows:
        if definition.endswith(suffix):
            conn.execute(sql.SQL("DROP TRIGGER {} ON {}").format(
                sql.Identifier(name), sql.Identifier("maxsim", table)))
            conn.execute(definition[: -len(suffix)] + f"('{int(new_id)}')")

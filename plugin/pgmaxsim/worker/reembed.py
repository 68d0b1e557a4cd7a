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
   transaction (``maxsim.switch_index``, sql/idempotent/045_switch.sql): it
   takes ACCESS EXCLUSIVE locks on both indexes' tables (waiting for in-flight
   writes; searches wait the few milliseconds of the swap, they never see an
   empty index), re-checks that the shadow's queue is empty, swaps the two
   indexes' storage by renaming their tables and indexes, re-points the token
   tables' triggers at their new index id, swaps model/revision/dim/pooling/
   options in the registry, moves the shadow's failures over, tells the scorer
   (``maxsim.changes``: the index was emptied, then every row written), and
   drops the shadow (now holding the old embeddings) with ``maxsim.drop_index``.
   Every step is a SQL entry point that checks the caller manages the index,
   so a worker running as a granted role re-embeds its own indexes.
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


def shadow_ids_of(conn: psycopg.Connection[Any], index_ids: list[int]) -> list[int]:
    """Shadow index ids of re-embeddings in progress for ``index_ids``."""
    if not index_ids:
        return []
    rows = conn.execute("SELECT shadow_id FROM maxsim.reembeds() WHERE index_id = ANY(%s)", (index_ids,))
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
    Any role that manages the index may (the SQL entry points check it).
    """
    row = conn.execute(
        "SELECT i.id, i.source::regclass::oid, i.id_column, i.text_column, i.image_column, i.model, i.pooling,"
        " i.options, i.model_revision FROM maxsim.list_indexes() i WHERE i.name = %s", (name,)).fetchone()
    if row is None:
        raise PgmaxsimError(f"index {name!r} does not exist")
    index_id, source, id_col, text_col, image_col, old_model, pooling, options, old_rev = row
    if reembed_status(conn, name) is not None:
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
    opts.pop("fs_gen", None)   # a codebook first stage is trained anew on the new model's tokens
    opts.pop("fs_rows", None)
    opts.pop("fs_count", None)
    opts.pop("fs_due", None)   # marked again by the shadow's own writes
    shadow = shadow_name(name)
    with conn.transaction():
        conn.execute(
            "SELECT maxsim.create_index(%s, %s::oid::regclass, %s, %s, %s, %s, %s, %s::jsonb)",
            (shadow, source, id_col, text_col, image_col, model, dim, json.dumps(opts)))
        conn.execute("SELECT maxsim.reembed_begin(%s, %s, %s)", (name, shadow, revision))
    state = reembed_status(conn, name)
    assert state is not None
    return state


def reembed_status(conn: psycopg.Connection[Any], name: str) -> Reembed | None:
    row = conn.execute(
        "SELECT index_name, shadow_name, index_id, shadow_id, model, model_revision, token_table, rows, queued,"
        " failed FROM maxsim.reembed_state(%s)", (name,)).fetchone()
    if row is None:
        return None
    return Reembed(row[0], row[1], row[2], row[3], row[4], row[5], int(row[7]), int(row[8]), int(row[9]))


def cancel_reembed(conn: psycopg.Connection[Any], name: str) -> bool:
    """Abandon a re-embedding in progress (drops the shadow); False when there was none."""
    row = conn.execute("SELECT maxsim.reembed_cancel(%s)", (name,)).fetchone()
    return bool(row and row[0])


def finish_ready(conn: psycopg.Connection[Any], specs: list[Any] | None = None) -> list[str]:
    """Switch over every re-embedding whose shadow queue is empty; the names switched.

    ``specs``: only re-embeddings whose shadow is among these indexes (the
    ones this worker serves); None = all that this role manages.
    """
    rows = conn.execute("SELECT index_id, shadow_id FROM maxsim.reembeds() WHERE ready").fetchall()
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
    """Swap the shadow's storage into index ``index_id`` in one transaction (see module doc and
    ``maxsim.switch_index``), then drop the shadow (now holding the old tables).

    Returns the index name, or None when it is not ready (the shadow's queue
    is not empty, or another worker is switching it right now).
    """
    names = {r[0]: r[1] for r in conn.execute(
        "SELECT id, name FROM maxsim.list_indexes() WHERE id = ANY(%s)", ([index_id, shadow_id],)).fetchall()}
    if index_id not in names or shadow_id not in names:
        return None
    with conn.transaction():
        row = conn.execute("SELECT maxsim.switch_index(%s, %s)", (names[index_id], names[shadow_id])).fetchone()
        if not (row and row[0]):
            raise psycopg.Rollback()
        conn.execute("SELECT maxsim.drop_index(%s)", (names[shadow_id],))
        return names[index_id]
    return None

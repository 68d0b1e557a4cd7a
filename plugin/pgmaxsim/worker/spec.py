"""Which indexes a worker serves: the ones with a model, and the shadows of their re-embeddings.

An index is a :class:`pgmaxsim.registry.IndexSpec` (the one registry model);
this module only chooses among them.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from pgmaxsim.errors import PgmaxsimError
from pgmaxsim.registry import IndexSpec, read_indexes
from pgmaxsim.worker.reembed import shadow_ids_of

__all__ = ["IndexSpec", "load_specs"]


def load_specs(conn: psycopg.Connection[Any], names: list[str] | None = None, *,
               missing_ok: bool = False) -> list[IndexSpec]:
    """Indexes with a model (the ones a worker embeds), optionally only ``names``.

    Raises PgmaxsimError naming an index in ``names`` that does not exist or
    has no model (its embeddings are written by the application), unless
    ``missing_ok`` (a worker already running skips an index dropped meanwhile).
    """
    # Only indexes this role may manage (the owner of the source, or an admin): the queue's entry
    # points refuse the others.
    specs = read_indexes(conn, sql.SQL("i.source IS NOT NULL AND maxsim._may_manage(i.source)"))
    if names:
        by_name = {s.name: s for s in specs}
        for n in names:
            if missing_ok:
                break
            if n not in by_name:
                raise PgmaxsimError(f"index {n!r} does not exist, or this role may not manage it"
                                    " (a worker runs as the owner of the index's source table or a pgmaxsim admin)")
            if not by_name[n].model:
                raise PgmaxsimError(
                    f"index {n!r} has no model: its embeddings are written by the application, not a worker"
                )
        wanted = set(names)
        specs = [s for s in specs if s.name in wanted]
        # Shadow indexes of a re-embedding in progress come with their index.
        shadows = shadow_ids_of(conn, [s.id for s in specs])
        if shadows:
            specs += read_indexes(conn, sql.SQL("i.id = ANY(%s)"), (shadows,))
    return [s for s in specs if s.model]

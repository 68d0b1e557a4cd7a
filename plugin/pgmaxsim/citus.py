"""pgmaxsim on Citus: what a client asks the coordinator.

An index over a distributed source table is distributed with it (sql/idempotent/085_citus.sql):
its token table and outbox are colocated with the source, search pushes the prefilter and the
exact MaxSim down to every shard and merges on the coordinator. Nothing here opens connections
of its own: every client keeps talking to the coordinator. What runs on a shard's node is
:mod:`pgmaxsim.plpy.shards`.
"""

from __future__ import annotations

from typing import Any


def shard_groups(conn: Any, source: str | None, keys: list[str]) -> list[list[str]]:
    """``keys`` (text forms of ``source``'s key) split by the shard they live in, when ``source``
    (regclass text) is a Citus distributed table; otherwise ``[keys]``.

    Citus runs ``FOR UPDATE``/``FOR KEY SHARE`` only in a query that stays on one shard, so a
    caller that locks a batch of source rows locks it one shard group at a time.
    """
    if not keys or source is None:
        return [keys] if keys else []
    row = conn.execute("SELECT maxsim._citus_distributed(to_regclass(%s))", (source,)).fetchone()
    if not row or not row[0]:
        return [keys]
    groups: dict[int, list[str]] = {}
    for key, shard in conn.execute(
            "SELECT u.k, get_shard_id_for_distribution_column(%s::regclass, u.k)"
            " FROM unnest(%s::text[]) WITH ORDINALITY AS u(k, o) ORDER BY u.o", (source, keys)).fetchall():
        groups.setdefault(int(shard), []).append(key)
    return list(groups.values())


def distributed_index(conn: Any, spec: Any) -> bool:
    """Whether index ``spec`` (:class:`pgmaxsim.registry.IndexSpec`) is distributed: its token table
    is a Citus distributed table (False where Citus is not installed)."""
    row = conn.execute("SELECT maxsim._citus_distributed(pg_catalog.to_regclass(pg_catalog.format('maxsim.%%I', %s::text)))",
                       (spec.token_table,)).fetchone()
    return bool(row and row[0])


#: Why ``reindex --first-stage`` does nothing for a distributed index (pgmaxsim.codebook.train).
FIRST_STAGE_REFUSED = ("index {name!r} is distributed (Citus): its first stage is 'mean' (each row's pooled vector,"
                       " kept in the token row on the row's shard), which has nothing to retrain; the codebook first"
                       " stage is not supported on distributed indexes (docs/SCALING.md)")

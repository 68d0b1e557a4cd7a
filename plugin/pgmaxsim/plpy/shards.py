"""Exact MaxSim next to a Citus shard (``maxsim._citus_shard_score``, ``maxsim._citus_score``).

A distributed index's search sends one statement to every shard of its token table
(sql/idempotent/085_citus.sql). On each shard, one call of :func:`score_shard` fetches the
shard's candidate rows in chunks and scores each chunk in one NumPy product, exactly as
single-node search scores its rows (:func:`pgmaxsim.plpy.api.score`: same chunks, same
kernel, same per-row tier detection), and returns the shard's best ``k``. The coordinator
merges the shards' lists. Tokens never leave their node; ids and scores do.

This module lives in :mod:`pgmaxsim.plpy` on purpose: importing that package first caps BLAS
at one thread in the backend before NumPy loads. A shard backend that imported NumPy first
ran every small product on two contending BLAS threads (measured 1.0 ms per row instead of
0.16 ms on 2 loaded cores).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pgmaxsim.plpy import api

# The query of the backend's last call: per-row scoring (:func:`score_row`) sees the same query
# bytes for every row of a statement, so it is decoded once per statement, not once per row.
_last_query: tuple[bytes, np.ndarray] | None = None


def _query(plpy: Any, blob: bytes, dim: int) -> np.ndarray:
    global _last_query
    if _last_query is not None and _last_query[0] == blob:
        return _last_query[1]
    q = api._query(plpy, blob, dim)
    _last_query = (bytes(blob), q)
    return q


def fetch_sql(shard: str, id_type: str, by_ids: bool) -> str:
    """The fetch of a shard's rows. ``shard`` and ``id_type`` are ``regclass`` / ``regtype``
    output (quoted by PostgreSQL), never text a caller wrote.

    >>> fetch_sql('maxsim.tok_2_102008', 'bigint', True)
    'SELECT t.id::text AS id, t.tokens AS tokens, t.n_tokens AS n FROM maxsim.tok_2_102008 t WHERE t.id = ANY ($1::bigint[])'
    """
    where = f" WHERE t.id = ANY ($1::{id_type}[])" if by_ids else ""
    return f"SELECT t.id::text AS id, t.tokens AS tokens, t.n_tokens AS n FROM {shard} t{where}"


def score_shard(plpy: Any, shard: str, query: bytes, ids: list[str | None] | None, k: int | None,
                dim: int, storage: str, id_type: str, name: str) -> list[tuple[str, float]]:
    """The best ``k`` (None: all) rows of ``shard`` among ``ids`` (text keys; None: every row)
    by exact MaxSim against ``query`` (``array_send(halfvec[])`` bytes), ranked like single-node
    scoring (score descending, then key)."""
    q = _query(plpy, query, dim)
    index = {"name": name, "dim": dim, "options": {"storage": storage}}
    batch = api.fetch_rows(q.shape[0])
    scores: dict[str, float] = {}
    if ids is None:
        cursor = plpy.cursor(api._plan(plpy, fetch_sql(shard, id_type, False)))
        while rows := cursor.fetch(batch):
            api._score_rows(plpy, index, q, list(rows), scores)
    else:
        keys = list(dict.fromkeys(i for i in ids if i is not None))
        plan = api._plan(plpy, fetch_sql(shard, id_type, True), ["text[]"])
        for start in range(0, len(keys), batch):
            api._score_rows(plpy, index, q, list(plpy.execute(plan, [keys[start:start + batch]])), scores)
    return api._ranked(scores, k)


def score_row(plpy: Any, tokens: bytes, n_tokens: int, query: bytes, dim: int, storage: str) -> float:
    """Exact MaxSim of one stored row (``tokens`` in tier ``storage``): the per-row fallback
    where a shard cannot be scored in one call (no ``tsm_system_rows``)."""
    q = _query(plpy, query, dim)
    out: dict[str, float] = {}
    api._score_rows(plpy, {"name": "", "dim": dim, "options": {"storage": storage}}, q,
                    [{"id": "", "tokens": tokens, "n": n_tokens}], out)
    return out[""]

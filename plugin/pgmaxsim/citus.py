"""pgmaxsim on Citus: what runs on a shard's node, and what a client asks the coordinator.

An index over a distributed source table is distributed with it (sql/idempotent/085_citus.sql):
its token table and outbox are colocated with the source, search pushes the prefilter and the
exact MaxSim down to every shard and merges on the coordinator. Nothing here opens connections
of its own: every client keeps talking to the coordinator.

Server side, :func:`score_stored` is the per-row exact MaxSim behind ``maxsim._citus_score``
(PL/Python on each worker node): the kernel single-node search uses
(:func:`pgmaxsim.plpy.scoring.maxsim_stored`), so a shard's score of a row is the single-node score.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The last decoded query of this backend: a shard scores its candidates one row per call, all
# with the same query bytes, so the query is decoded once per statement, not once per row.
_last_query: tuple[bytes, np.ndarray] | None = None


def _decoded_query(plpy: Any, query: bytes) -> np.ndarray:
    global _last_query
    if _last_query is not None and _last_query[0] == query:
        return _last_query[1]
    from pgmaxsim.db.codec import CodecError
    from pgmaxsim.plpy.tokens import decode_query

    try:
        q = decode_query(query)
    except CodecError as e:
        plpy.error(f"pgmaxsim: query: {e}", sqlstate="22023")
        raise AssertionError("unreachable") from None
    _last_query = (bytes(query), q)
    return q


def score_stored(plpy: Any, tokens: bytes, n_tokens: int, query: bytes, dim: int, storage: str) -> float:
    """Exact MaxSim of one stored row (``tokens`` in tier ``storage``) against ``query``
    (``array_send(halfvec[])`` bytes), as single-node scoring computes it."""
    from pgmaxsim.kernels import quantize
    from pgmaxsim.plpy import api, scoring

    q = _decoded_query(plpy, query)
    tier = api.row_storage(len(tokens), n_tokens, dim, storage)
    try:
        return float(scoring.maxsim_stored(q, [bytes(tokens)], dim, tier)[0])
    except quantize.StoredTokensError as e:
        plpy.error(f"pgmaxsim: stored tokens are malformed: {e}", sqlstate="XX000")
        raise AssertionError("unreachable") from None


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

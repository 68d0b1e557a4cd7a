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
                dim: int, storage: str, id_type: str, name: str,
                scorer: str | None = None) -> list[tuple[str, float]]:
    """The best ``k`` (None: all) rows of ``shard`` among ``ids`` (text keys; None: every row)
    by exact MaxSim against ``query`` (``array_send(halfvec[])`` bytes), ranked like single-node
    scoring (score descending, then key). ``scorer``: the coordinator's scorer settings (JSON
    text, see :func:`node_scores`), or None: score here."""
    q = _query(plpy, query, dim)
    index = {"name": name, "dim": dim, "options": {"storage": storage}}
    batch = api.fetch_rows(q.shape[0])
    scores: dict[str, float] = {}
    if scorer:
        got = node_scores(plpy, shard, q, ids, id_type, scorer)
        if got is not None:
            scores, ids = got
            if not ids:
                return api._ranked(scores, k)
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


# ---------------------------------------------------------------- the node's scorer

#: Versions of a shard's rows in the caller's snapshot (all rows, or ``ids``).
_VERSIONS_SQL = "SELECT t.id::text AS id, t.version FROM {shard} t"
_noticed: set[tuple[str, str]] = set()
_port: list[str] = []


def _versions(plpy: Any, shard: str, ids: list[str] | None, id_type: str) -> list[Any]:
    sql = _VERSIONS_SQL.format(shard=shard)
    if ids is None:
        return list(plpy.execute(api._plan(plpy, sql)))
    plan = api._plan(plpy, sql + f" WHERE t.id = ANY ($1::{id_type}[])", ["text[]"])
    return list(plpy.execute(plan, [ids]))


def node_scores(plpy: Any, shard: str, q: np.ndarray, ids: list[str | None] | None, id_type: str,
                scorer: str) -> tuple[dict[str, float], list[str]] | None:
    """Ask this node's scorer (:mod:`pgmaxsim.scorer.citus_node`) for the rows of ``shard``.

    ``scorer`` is the coordinator's ``maxsim.settings`` scorer keys as JSON (an admin's; read by
    ``maxsim._citus_score_ids`` as the schema owner); ``{port}`` in the address becomes this
    node's port, so one setting gives every node its own local scorer. The rows' versions are read
    here first, in the caller's snapshot (which also checks that the caller may read the shard),
    and the scorer scores only rows it holds at exactly those versions. Returns ``(scores, ids it
    did not score)``, or None when it cannot answer (not running, not holding the shard yet: a
    move just brought it): then the caller scores everything here.
    """
    import json

    from pgmaxsim.plpy import remote

    rows = _versions(plpy, shard, None if ids is None else list(dict.fromkeys(i for i in ids if i is not None)),
                     id_type)
    if not rows:
        return {}, []
    settings = json.loads(scorer)
    if not _port:
        _port.append(str(plpy.execute("SELECT pg_catalog.current_setting('port') AS p")[0]["p"]))
    try:
        timeout = float(settings.get("scorer_timeout_ms") or remote.DEFAULT_TIMEOUT_MS) / 1000.0
    except ValueError:
        timeout = remote.DEFAULT_TIMEOUT_MS / 1000.0
    cfg = remote.Config(str(settings["scorer"]).replace(remote.PORT_PLACEHOLDER, _port[0]), timeout * 1000.0,
                        settings.get("scorer_secret_file") or None, settings.get("scorer_user") or None)
    tids = [r["id"] for r in rows]
    try:
        client = remote._connect(cfg, timeout)
        res = remote._call(client, lambda: client.score_shard(shard, q, tids, [int(r["version"]) for r in rows]))
    except (ValueError, remote._Unavailable) as exc:
        why = str(exc)
        # A shard the scorer does not hold (yet) is routine around a shard move: no NOTICE for it.
        if not why.startswith("unknown_index") and (cfg.address, why.split(":")[0]) not in _noticed:
            _noticed.add((cfg.address, why.split(":")[0]))
            remote._notice(plpy, f"node scorer: {why}")
        return None
    got = {i: float(s) for i, s, f in zip(res.ids, res.scores, res.found) if f}
    return got, [i for i in tids if i not in got]

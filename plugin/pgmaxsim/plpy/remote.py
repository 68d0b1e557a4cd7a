"""The scorer service seen from inside a PostgreSQL backend (PL/Python).

Imports only the standard library, NumPy and stdlib/NumPy-only pgmaxsim
modules: it runs in the database server. CUDA never runs here; the scorer is a
separate process (``pgmaxsim scorer``) reached over a local socket.

Every function returns ``None`` when the scorer cannot answer (none configured,
not reachable, overloaded, index not loaded yet or failed to load, a request
limit, the caller's snapshot older than the scorer's journal); the caller then
scores on the CPU and raises a NOTICE with :func:`last_reason`. Only a request
that the CPU path would reject too (wrong dim, bad k) raises PgmaxsimError.

Configuration (custom GUCs, ``SET``/``ALTER DATABASE ... SET``/postgresql.conf):

- ``pgmaxsim.scorer``: address of the scorer: a Unix socket path
  (``/run/pgmaxsim/scorer.sock``), ``unix:PATH`` or ``HOST:PORT``.
  Unset or empty = no scorer (CPU path, no NOTICE).
- ``pgmaxsim.scorer_timeout_ms``: per-request timeout (default 5000).

API for the SQL functions (``index`` is a mapping with the registry's ``id``,
``token_table`` and ``id_type`` (the regtype's text, e.g. ``'bigint'``)):

``rerank(plpy, index, query, keys) -> Reranked | None``
    Exact MaxSim of ``query`` (nq, d) float32 against the rows ``keys`` (primary
    key values as PL/Python passes them; duplicates allowed). Reads each key's
    ``version`` in the caller's snapshot, sends (id::text, version) pairs, and
    the scorer scores those whose version it holds. ``Reranked.keys/scores`` are
    the scored rows; ``Reranked.missing`` the keys visible in the caller's
    snapshot that the scorer did not hold at that version (not synced yet): the
    caller scores those on the CPU and merges. Keys absent from the token table
    in the snapshot appear in neither list (deleted rows are never returned).

``search_exact(plpy, index, query, k, cpu_score) -> list[(id_text, score)] | None``
    Exhaustive exact top-``k`` correct for the caller's snapshot.
    ``cpu_score(id_texts: list[str]) -> (id_texts, scores)`` must score the
    given rows (``id::text`` values) in the caller's snapshot and skip those
    absent. The scorer returns its top-k (excluding rows it holds in a state the
    caller cannot see yet, which it lists as ``dirty``) with its sync watermark
    (a ``pg_snapshot``); this function adds the rows changed between the
    watermark and the caller's snapshot (``maxsim.changes``), drops those from
    the scorer's list, has ``cpu_score`` score all dirty rows and merges.
    Ids are returned as ``id::text``: cast back with ``$1::text[]::<pk type>[]``.
    Ties are broken by id text (ascending) in both paths.

``score_versions(plpy, index_id, query, id_texts, versions) -> Scored | None``
    The lower level of ``rerank`` when the caller already has versions.

The SQL functions calling these must be ``STABLE`` (not VOLATILE) so that
every query inside sees the statement's snapshot, the one
``pg_current_snapshot()`` names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pgmaxsim.errors import PgmaxsimError
from pgmaxsim.scorer.client import Scored, ScorerClient
from pgmaxsim.scorer.protocol import ProtocolError, ScorerError

SETTING = "pgmaxsim.scorer"
TIMEOUT_SETTING = "pgmaxsim.scorer_timeout_ms"
DEFAULT_TIMEOUT_MS = 5000

#: Rows changed in the caller's snapshot after the scorer's watermark $2.
DIRTY_BEHIND_SQL = (
    "SELECT DISTINCT row_id FROM maxsim.changes "
    "WHERE index_id = $1 AND xid >= pg_snapshot_xmin($2::pg_snapshot) "
    "AND NOT pg_visible_in_snapshot(xid, $2::pg_snapshot)"
)

_clients: dict[str, ScorerClient] = {}
_plans: dict[Any, Any] = {}
_last_reason = ""
_FALLBACK_CODES = {"overloaded", "not_ready", "unknown_index", "snapshot_too_old", "limit", "internal"}


@dataclass
class Reranked:
    keys: list[Any]
    scores: np.ndarray
    missing: list[Any]


def last_reason() -> str:
    """Why the last call returned None (for the caller's NOTICE)."""
    return _last_reason


def _set_reason(text: str) -> None:
    global _last_reason
    _last_reason = text


def _plan(plpy: Any, sql: str, types: list[str]) -> Any:
    key = (sql, tuple(types))
    plan = _plans.get(key)
    if plan is None:
        plan = plpy.prepare(sql, types)
        _plans[key] = plan
    return plan


def scorer_client(plpy: Any) -> ScorerClient | None:
    """The backend's client for the configured scorer, or None if none is configured."""
    row = plpy.execute(
        f"SELECT current_setting('{SETTING}', true) AS a, current_setting('{TIMEOUT_SETTING}', true) AS t"
    )[0]
    address = (row["a"] or "").strip()
    if not address:
        _set_reason("no scorer configured")
        return None
    try:
        timeout = float(row["t"]) / 1000.0 if row["t"] else DEFAULT_TIMEOUT_MS / 1000.0
    except ValueError:
        timeout = DEFAULT_TIMEOUT_MS / 1000.0
    client = _clients.get(address)
    if client is None:
        try:
            client = ScorerClient(address, timeout=timeout)
        except ValueError as exc:
            _set_reason(str(exc))
            return None
        _clients[address] = client
    client.timeout = timeout
    return client


def _call(fn: Callable[[], Any]) -> Any:
    """Run one client call; map failures to None (+ reason) or PgmaxsimError."""
    try:
        return fn()
    except ScorerError as exc:
        if exc.code in _FALLBACK_CODES:
            _set_reason(f"scorer {exc.code}: {exc.message}")
            return None
        raise PgmaxsimError(f"scorer: {exc.message}") from None
    except (ProtocolError, OSError) as exc:
        _set_reason(f"scorer unreachable: {exc}")
        return None


def score_versions(plpy: Any, index_id: int, query: np.ndarray, id_texts: Sequence[str],
                   versions: Sequence[int]) -> Scored | None:
    client = scorer_client(plpy)
    if client is None:
        return None
    return _call(lambda: client.score(index_id, query, id_texts, versions))


def rerank(plpy: Any, index: Mapping[str, Any], query: np.ndarray, keys: Sequence[Any]) -> Reranked | None:
    client = scorer_client(plpy)
    if client is None:
        return None
    sql = (f"SELECT id AS key, id::text AS tid, version FROM maxsim.{plpy.quote_ident(index['token_table'])} "
           "WHERE id = ANY($1)")
    rows = plpy.execute(_plan(plpy, sql, [f"{index['id_type']}[]"]), [list(keys)])
    if len(rows) == 0:
        return Reranked([], np.zeros(0, dtype=np.float32), [])
    tids = [r["tid"] for r in rows]
    res = _call(lambda: client.score(int(index["id"]), query, tids, [r["version"] for r in rows]))
    if res is None:
        return None
    found = res.found
    rkeys = [r["key"] for r in rows]
    return Reranked(
        keys=[k for k, f in zip(rkeys, found) if f],
        scores=res.scores[found],
        missing=[k for k, f in zip(rkeys, found) if not f],
    )


def search_exact(plpy: Any, index: Mapping[str, Any], query: np.ndarray, k: int,
                 cpu_score: Callable[[list[str]], tuple[Sequence[str], np.ndarray]]
                 ) -> list[tuple[str, float]] | None:
    client = scorer_client(plpy)
    if client is None:
        return None
    snapshot = plpy.execute("SELECT pg_current_snapshot()::text AS s")[0]["s"]
    index_id = int(index["id"])
    behind_plan = _plan(plpy, DIRTY_BEHIND_SQL, ["int", "text"])
    exclude: list[str] = []
    for _round in range(4):
        reply = _call(lambda: client.search(index_id, query, k, snapshot, exclude))
        if reply is None:
            return None
        behind = {r["row_id"] for r in plpy.execute(behind_plan, [index_id, reply.watermark])}
        dirty = behind | set(reply.dirty)
        clean = [(i, float(s)) for i, s in zip(reply.ids, reply.scores) if i not in dirty]
        # The clean part is a prefix of the scorer's ranking over clean rows;
        # when dirty rows were cut from it and more rows exist, ask again
        # excluding them so that k clean rows come back.
        if len(clean) >= min(k, len(reply.ids)) or reply.exhausted:
            break
        exclude = sorted(behind)
    else:
        _set_reason("scorer state kept changing during the query")
        return None
    merged = dict(clean)
    if dirty:
        ids, scores = cpu_score(sorted(dirty))
        for i, s in zip(ids, np.asarray(scores, dtype=np.float64)):
            merged[str(i)] = float(s)
    out = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))
    return out[:k]

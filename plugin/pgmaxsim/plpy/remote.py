"""Hook to the scorer service, tried by :mod:`pgmaxsim.plpy.api` before the CPU path.

Runs inside PostgreSQL backends: imports only the standard library, NumPy and
stdlib/NumPy-only pgmaxsim modules (never CuPy or psycopg). CUDA runs in the
separate ``pgmaxsim scorer`` process, reached over a local socket.

Configuration (custom settings: ``SET``, ``ALTER DATABASE … SET`` or postgresql.conf):

- ``pgmaxsim.scorer``: the scorer's address: a Unix socket path
  (``/tmp/pgmaxsim-scorer.sock``), ``unix:PATH`` or ``HOST:PORT``. Unset or
  empty: no scorer, the CPU path runs silently.
- ``pgmaxsim.scorer_timeout_ms``: per-request timeout (default 5000).

The two entry points (signatures fixed by :mod:`pgmaxsim.plpy.api`):

``score_ids(plpy, index, query, ids) -> dict[id_text, score] | None``
    Reads each id's ``version`` in the caller's snapshot and sends (id, version)
    pairs; the scorer scores the rows it holds at exactly that version. The
    dict covers those rows; the caller scores the rest (not synced yet) on the
    CPU. Ids absent in the snapshot are in neither (deleted rows never return).

``search_all(plpy, index, query, k) -> [(id_text, score), …] | None``
    Exhaustive exact top-``k``, correct for the caller's snapshot: the scorer
    returns its top-k over rows the caller can see at the version it holds,
    its sync watermark (a ``pg_snapshot``) and the rows it holds in a state the
    caller cannot see yet (*dirty*); this function adds the rows changed
    between the watermark and the caller's snapshot (``maxsim.changes.xid``),
    drops them from the scorer's list, scores every dirty row here from the
    caller's snapshot and merges. ``k = None`` (all rows) is left to the CPU.

Both return None when no scorer is configured (silently) or when it cannot
answer (unreachable, overloaded, index loading or failed to load, a request
limit, snapshot older than its journal): then they raise a NOTICE naming why
and the caller scores on the CPU. They need the calling SQL function to be
STABLE, so that every query here sees the statement's snapshot.
Ties are ordered by id text, as in the CPU path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pgmaxsim.scorer.client import ScorerClient
from pgmaxsim.scorer.protocol import ProtocolError, ScorerError

SETTING = "pgmaxsim.scorer"
TIMEOUT_SETTING = "pgmaxsim.scorer_timeout_ms"
DEFAULT_TIMEOUT_MS = 5000
FETCH_ROWS = 128

#: Rows changed in the caller's snapshot after the scorer's watermark $2.
DIRTY_BEHIND_SQL = (
    "SELECT DISTINCT row_id FROM maxsim.changes "
    "WHERE index_id = $1 AND row_id IS NOT NULL AND xid >= pg_catalog.pg_snapshot_xmin($2::pg_snapshot) "
    "AND NOT pg_catalog.pg_visible_in_snapshot(xid, $2::pg_snapshot)"
)

_clients: dict[str, ScorerClient] = {}
_plans: dict[Any, Any] = {}


class _Unavailable(Exception):
    pass


def _plan(plpy: Any, sql: str, types: list[str]) -> Any:
    key = (sql, tuple(types))
    plan = _plans.get(key)
    if plan is None:
        plan = plpy.prepare(sql, types)
        _plans[key] = plan
    return plan


def _client(plpy: Any) -> ScorerClient | None:
    row = plpy.execute(
        f"SELECT pg_catalog.current_setting('{SETTING}', true) AS a,"
        f" pg_catalog.current_setting('{TIMEOUT_SETTING}', true) AS t")[0]
    address = (row["a"] or "").strip()
    if not address:
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
            _notice(plpy, str(exc))
            return None
        _clients[address] = client
    client.timeout = timeout
    return client


def _notice(plpy: Any, why: str) -> None:
    plpy.notice(f"pgmaxsim: scorer service not used ({why}); scoring on the CPU in this backend")


def _call(client: ScorerClient, fn: Any) -> Any:
    try:
        return fn()
    except ScorerError as exc:
        raise _Unavailable(f"{exc.code}: {exc.message}") from None
    except (ProtocolError, OSError) as exc:
        client.close()
        raise _Unavailable(f"unreachable at {client.address}: {exc}") from None


def _tok(plpy: Any, index: dict[str, Any]) -> str:
    return "maxsim." + plpy.quote_ident(index["token_table"])


def _versions(plpy: Any, index: dict[str, Any], ids: list[str]) -> tuple[list[str], list[int]]:
    sql = (f"SELECT t.id::text AS id, t.version FROM {_tok(plpy, index)} t "
           f"WHERE t.id = ANY ($1::{index['id_type']}[])")
    rows = plpy.execute(_plan(plpy, sql, ["text[]"]), [ids])
    return [r["id"] for r in rows], [int(r["version"]) for r in rows]


def score_ids(plpy: Any, index: dict[str, Any], query: np.ndarray, ids: list[str]) -> dict[str, float] | None:
    client = _client(plpy)
    if client is None:
        return None
    try:
        tids, versions = _versions(plpy, index, ids)
        if not tids:
            return {}
        res = _call(client, lambda: client.score(int(index["id"]), query, tids, versions))
    except _Unavailable as exc:
        _notice(plpy, str(exc))
        return None
    return {i: float(s) for i, s, f in zip(res.ids, res.scores, res.found) if f}


def _cpu_scores(plpy: Any, index: dict[str, Any], query: np.ndarray, ids: list[str]) -> dict[str, float]:
    """Score rows ``ids`` from the caller's snapshot (absent rows are skipped)."""
    from pgmaxsim.plpy import cpu
    from pgmaxsim.plpy.tokens import pack

    sql = (f"SELECT t.id::text AS id, pg_catalog.array_send(t.tokens) AS tokens FROM {_tok(plpy, index)} t "
           f"WHERE t.id = ANY ($1::{index['id_type']}[])")
    plan = _plan(plpy, sql, ["text[]"])
    out: dict[str, float] = {}
    for start in range(0, len(ids), FETCH_ROWS):
        rows = list(plpy.execute(plan, [ids[start:start + FETCH_ROWS]]))
        if not rows:
            continue
        tokens, offsets = pack([r["tokens"] for r in rows], int(index["dim"]))
        for r, s in zip(rows, cpu.maxsim_packed(query, tokens, offsets).tolist()):
            out[r["id"]] = float(s)
    return out


def search_all(plpy: Any, index: dict[str, Any], query: np.ndarray, k: int | None) -> list[tuple[str, float]] | None:
    if k is None:
        return None
    client = _client(plpy)
    if client is None:
        return None
    index_id = int(index["id"])
    try:
        snapshot = plpy.execute("SELECT pg_catalog.pg_current_snapshot()::text AS s")[0]["s"]
        behind_plan = _plan(plpy, DIRTY_BEHIND_SQL, ["integer", "text"])
        exclude: list[str] = []
        for _round in range(4):
            reply = _call(client, lambda: client.search(index_id, query, k, snapshot, exclude))
            behind = {r["row_id"] for r in plpy.execute(behind_plan, [index_id, reply.watermark])}
            dirty = behind | set(reply.dirty) | set(exclude)
            clean = [(i, float(s)) for i, s in zip(reply.ids, reply.scores) if i not in dirty]
            # `clean` is a prefix of the scorer's ranking of the clean rows. If dirty rows
            # were cut from a full top-k, ask again without them so k clean rows come back.
            if len(clean) == len(reply.ids) or reply.exhausted:
                break
            exclude = sorted(behind)
        else:
            raise _Unavailable("its state kept changing during the query")
    except _Unavailable as exc:
        _notice(plpy, str(exc))
        return None
    merged = dict(clean)
    if dirty:
        merged.update(_cpu_scores(plpy, index, query, sorted(dirty)))
    return sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


#: Query encodings remembered per backend (index, model, revision, text) -> halfvec texts.
_encoded: dict[tuple[Any, ...], list[str]] = {}
ENCODE_MEMO = 256
#: Encoding may load a model on first use: at least this long, whatever the scoring timeout.
ENCODE_TIMEOUT_S = 30.0


def encode_query(plpy: Any, index_id: int, dim: int, query: str) -> tuple[list[str] | None, str | None, str | None]:
    """``maxsim._encode_remote``: (tokens as halfvec texts, error, hint) from the scorer's encoder.

    Connects nowhere when no scorer is configured (maxsim.set_scorer): the error says so.
    """
    row = plpy.execute(_plan(plpy, "SELECT i.model, i.model_revision FROM maxsim.indexes i WHERE i.id = $1",
                             ["integer"]), [index_id])
    key = (index_id, row[0]["model"] if row else None, row[0]["model_revision"] if row else None, query)
    if key in _encoded:
        return _encoded[key], None, None
    client = _client(plpy)
    if client is None:
        return None, ("maxsim.encode_query needs the scorer service, and no scorer is configured for this"
                      " database"), ("start one (pgmaxsim scorer --dsn <this database>), then an admin runs"
                                     " SELECT maxsim.set_scorer('<its socket path or host:port>')")
    timeout, client.timeout = client.timeout, max(client.timeout, ENCODE_TIMEOUT_S)
    try:
        head, arrays = client.request({"op": "encode_query", "index": int(index_id), "text": query})
    except ScorerError as exc:
        if exc.code == "unknown_index":
            return None, f"the scorer at {client.address} does not serve this index: {exc.message}", \
                "the scorer loads the indexes it serves when it starts or reloads (pgmaxsim scorer --index NAME)"
        return None, f"scorer at {client.address}: {exc.message}", None
    except (ProtocolError, OSError) as exc:
        client.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
        return None, (f"maxsim.encode_query needs the scorer service, which is not reachable at"
                      f" {client.address} ({reason})"), "start it: pgmaxsim scorer --dsn <this database>"
    finally:
        client.timeout = timeout
    tokens = np.asarray(arrays.get("tokens"), dtype=np.float32)
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] != dim:
        return None, f"the scorer encoded the query as shape {tokens.shape}, expected (n, {dim})", None
    if not np.isfinite(tokens).all():
        return None, "the scorer returned non-finite query embeddings", None
    half = tokens.astype(np.float16).astype(np.float32)
    out = ["[" + ",".join(repr(float(x)) for x in r) + "]" for r in half]
    if len(_encoded) >= ENCODE_MEMO:
        _encoded.clear()
    _encoded[key] = out
    return out, None, None

"""Hook to the scorer service, tried by :mod:`pgmaxsim.plpy.api` before the CPU path.

Runs inside PostgreSQL backends: imports only the standard library, NumPy and
stdlib/NumPy-only pgmaxsim modules (never CuPy or psycopg). CUDA runs in the
separate ``pgmaxsim scorer`` process, reached over a local socket.

Configuration: rows of ``maxsim.settings (key, value)``, which only an admin
writes (``SELECT maxsim.set_scorer('/run/pgmaxsim/scorer.sock')``), because the
address decides where backends send query embeddings and whose scores they
believe. This code runs in SECURITY DEFINER functions, as the schema owner.

- ``scorer``: the scorer's address: a Unix socket path, ``unix:PATH`` or
  ``HOST:PORT``. Absent or empty: no scorer; search and rerank score on the CPU
  silently, ``encode_query`` says that no scorer is configured.
- ``scorer_timeout_ms``: per-request timeout (default 5000).
- ``scorer_secret_file``: for a TCP address, a file the PostgreSQL server's OS
  user can read holding the scorer's shared secret (``--secret-file``).
- ``scorer_user``: the OS user the scorer runs as, when neither root nor the
  PostgreSQL server's user: the client trusts a socket only from those.

The custom setting ``pgmaxsim.scorer`` that earlier versions read is ignored
(any role could ``SET`` it): a NOTICE says so, once per backend.

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

from dataclasses import dataclass
from typing import Any

import numpy as np

from pgmaxsim.plpy.plans import kept as _plan
from pgmaxsim.scorer.client import ScorerClient
from pgmaxsim.scorer.protocol import SNAPSHOT_SQL, ProtocolError, ScorerError

IGNORED_SETTING = "pgmaxsim.scorer"
DEFAULT_TIMEOUT_MS = 5000
FETCH_ROWS = 128
SET_SCORER_HINT = "an admin sets the scorer's address with SELECT maxsim.set_scorer('/run/pgmaxsim/scorer.sock')"

#: Whether maxsim.settings exists yet (revisions before it: no scorer) and the ignored setting.
PROBE_SQL = (f"SELECT pg_catalog.to_regclass('maxsim.settings') IS NOT NULL AS present, "
             f"pg_catalog.current_setting('{IGNORED_SETTING}', true) AS ignored, "
             f"pg_catalog.current_setting('port') AS port")
#: In the scorer's address, replaced by this server's port: the setting is replicated, so one
#: address such as ``/run/pgmaxsim/scorer-{port}.sock`` gives each server of a primary and its hot
#: standbys on one host its own scorer (on separate hosts a fixed path does the same).
PORT_PLACEHOLDER = "{port}"
SETTINGS_SQL = ("SELECT s.key, s.value FROM maxsim.settings s "
                "WHERE s.key IN ('scorer', 'scorer_timeout_ms', 'scorer_secret_file', 'scorer_user')")

#: Rows changed in the caller's snapshot after the scorer's watermark $2.
DIRTY_BEHIND_SQL = (
    "SELECT DISTINCT row_id FROM maxsim.changes "
    "WHERE index_id = $1 AND row_id IS NOT NULL AND xid >= pg_catalog.pg_snapshot_xmin($2::pg_snapshot) "
    "AND NOT pg_catalog.pg_visible_in_snapshot(xid, $2::pg_snapshot)"
)

_clients: dict[tuple[str, str | None, str | None], ScorerClient] = {}
_noticed_ignored = False
_encoded: dict[tuple[Any, ...], list[str]] = {}


class _Unavailable(Exception):
    pass


@dataclass(frozen=True)
class Config:
    """The scorer settings of ``maxsim.settings`` (see the module docstring)."""

    address: str
    timeout_ms: float | None
    secret_file: str | None
    user: str | None


def config(plpy: Any) -> Config | None:
    """The admin's scorer settings, or None when no scorer is configured."""
    global _noticed_ignored
    probe = plpy.execute(_plan(plpy, PROBE_SQL, []))[0]
    if (probe["ignored"] or "").strip() and not _noticed_ignored:
        _noticed_ignored = True
        plpy.notice(f"pgmaxsim: the setting {IGNORED_SETTING} is ignored: backends reach only the scorer an "
                    f"admin configured ({SET_SCORER_HINT})")
    if not probe["present"]:
        return None
    values = {r["key"]: (r["value"] or "").strip() for r in plpy.execute(_plan(plpy, SETTINGS_SQL, []))}
    if not values.get("scorer"):
        return None
    try:
        timeout_ms = float(values["scorer_timeout_ms"]) if values.get("scorer_timeout_ms") else None
    except ValueError:
        timeout_ms = None
    address = values["scorer"].replace(PORT_PLACEHOLDER, str(probe["port"]))
    return Config(address, timeout_ms, values.get("scorer_secret_file") or None,
                  values.get("scorer_user") or None)


def _connect(cfg: Config, timeout: float) -> ScorerClient:
    """This backend's client for ``cfg`` (one connection, reused). Raises ValueError for a bad address."""
    key = (cfg.address, cfg.secret_file, cfg.user)
    client = _clients.get(key)
    if client is None:
        client = ScorerClient(cfg.address, timeout=timeout, secret_file=cfg.secret_file,
                              trusted_users=[cfg.user] if cfg.user else [])
        _clients[key] = client
    client.timeout = timeout
    return client


def _client(plpy: Any) -> ScorerClient | None:
    cfg = config(plpy)
    if cfg is None:
        return None
    try:
        return _connect(cfg, (cfg.timeout_ms or DEFAULT_TIMEOUT_MS) / 1000.0)
    except ValueError as exc:
        _notice(plpy, str(exc))
        return None


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
    from pgmaxsim.plpy import api

    sql = (f"SELECT t.id::text AS id, t.tokens AS tokens, t.n_tokens AS n FROM {_tok(plpy, index)} t "
           f"WHERE t.id = ANY ($1::{index['id_type']}[])")
    plan = _plan(plpy, sql, ["text[]"])
    out: dict[str, float] = {}
    for start in range(0, len(ids), FETCH_ROWS):
        api._score_rows(plpy, index, query, list(plpy.execute(plan, [ids[start:start + FETCH_ROWS]])), out)
    return out


def search_all(plpy: Any, index: dict[str, Any], query: np.ndarray, k: int | None) -> list[tuple[str, float]] | None:
    if k is None:
        return None
    client = _client(plpy)
    if client is None:
        return None
    index_id = int(index["id"])
    try:
        snapshot = plpy.execute(_plan(plpy, SNAPSHOT_SQL, []))[0]["s"]
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


#: Encoding may load a model on first use: at least this long, whatever the scoring timeout.
ENCODE_TIMEOUT_S = 30.0
ENCODE_MEMO = 256


def encode_query(plpy: Any, index_id: int, dim: int, query: str) -> tuple[list[str] | None, str | None, str | None]:
    """Body of ``maxsim._encode_remote``: the scorer encodes ``query`` with the index's model.

    Returns ``(tokens as halfvec texts, None, None)`` or ``(None, error, hint)``, which
    ``maxsim.encode_query`` raises. Connects nowhere when no scorer is configured.
    Encodings are remembered per backend (256 at most).
    """
    row = plpy.execute(_plan(plpy, "SELECT i.model, i.model_revision FROM maxsim.indexes i WHERE i.id = $1",
                             ["integer"]), [index_id])
    model = (row[0]["model"], row[0]["model_revision"]) if row else (None, None)
    key = (index_id, *model, query)
    if key in _encoded:
        return _encoded[key], None, None
    cfg = config(plpy)
    if cfg is None:
        return None, ("maxsim.encode_query needs the scorer service, and no scorer is configured for this"
                      " database"), f"start one (pgmaxsim scorer --dsn <this database>), then {SET_SCORER_HINT}"
    timeout = max((cfg.timeout_ms or 0) / 1000.0, ENCODE_TIMEOUT_S)
    try:
        client = _connect(cfg, timeout)
    except ValueError as exc:
        return None, f"bad scorer address in maxsim.settings: {exc}", SET_SCORER_HINT
    try:
        _head, arrays = client.request({"op": "encode_query", "index": int(index_id), "text": query})
    except ScorerError as exc:
        if exc.code == "unknown_index":
            return None, f"the scorer at {cfg.address} does not serve this index: {exc.message}", \
                "the scorer loads the indexes it serves when it starts or reloads (pgmaxsim scorer --index NAME)"
        return None, f"scorer at {cfg.address}: {exc.message}", None
    except (ProtocolError, OSError) as exc:
        client.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
        return None, (f"maxsim.encode_query needs the scorer service, which is not reachable at {cfg.address} "
                      f"({reason})"), "start it: pgmaxsim scorer --dsn <this database>"
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

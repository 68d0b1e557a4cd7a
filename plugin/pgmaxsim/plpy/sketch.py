"""The residual sketch lists of a codebook first stage, inside the backend (``maxsim._sk_top``, and the
centroid-interaction rescoring of pgmaxsim.plpy.codes; sql/idempotent/034_sketch.sql).

Per query: probe the live codebook (the same probe as the probe score's), read the lists of the probed
codes, score the row versions the XTR-WARP way (pgmaxsim.sketch.scores). The scores of one query are
kept for the rest of its statement (keyed by the statement's start and snapshot), so the rescoring
step reuses what ``_sk_top`` computed.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from pgmaxsim import firststage as fs
from pgmaxsim import sketch
from pgmaxsim.plpy.plans import kept as _plan
from pgmaxsim.plpy.tokens import decode_query

#: Rows the sketch puts first among the candidates when the option is absent (bench/FIRST_STAGE.md:
#: the top 10 by sketch score + the rest of the budget by the codebook's centroid interaction).
TOP = 10

_codecs: dict[tuple[int, int, int], sketch.Codec] = {}
_last: dict[str, Any] = {}


def sketch_top(index: dict[str, Any]) -> int:
    return int(index["options"].get("sketch_top", TOP))


def _codec(plpy: Any, index_id: int, gen: int) -> sketch.Codec | None:
    """The sketch codec of generation ``gen`` (None: no lists built for it, or no tables)."""
    oid = plpy.execute(f"SELECT pg_catalog.to_regclass('maxsim.fs_skm_{int(index_id)}')::oid AS o")[0]["o"]
    if oid is None:
        return None
    key = (int(index_id), int(gen), int(oid))
    if key in _codecs:
        return _codecs[key]
    rows = plpy.execute(f"SELECT m.mag FROM maxsim.fs_skm_{int(index_id)} m"
                        f" WHERE m.slot = {int(gen) % 2} AND m.gen = {int(gen)}")
    if not rows:
        return None
    _codecs.clear()
    _codecs[key] = sketch.Codec(np.asarray(rows[0]["mag"], dtype=np.float32))
    return _codecs[key]


def _statement(plpy: Any) -> str:
    return plpy.execute("SELECT pg_catalog.statement_timestamp()::text || ' '"
                        " || pg_catalog.pg_current_snapshot()::text AS s")[0]["s"]


def _entries(plpy: Any, index_id: int, slot: int, codes: np.ndarray, nbytes: int) -> sketch.Entries:
    """The list entries of ``codes`` (every segment), read as one row: the list rows' fields
    aggregated in SQL and split here with a few vectorised steps (a row by row read cost ~10 us of
    Python per list row, and a query reads ~1,000 of them)."""
    plan = _plan(plpy, f"SELECT pg_catalog.array_agg(l.code) AS code, pg_catalog.array_agg(l.base) AS base,"
                       f" pg_catalog.array_agg(pg_catalog.length(l.offs)) AS olen,"
                       f" pg_catalog.array_agg(pg_catalog.length(l.sk)) AS slen,"
                       f" pg_catalog.string_agg(l.offs, ''::bytea) AS offs, pg_catalog.string_agg(l.sk, ''::bytea) AS sk"
                       f" FROM maxsim.fs_sk_{int(index_id)} l WHERE l.slot = $1 AND l.code = ANY ($2)",
                 ["int2", "int4[]"])
    r = plpy.execute(plan, [slot, [int(c) for c in np.unique(codes)]])[0]
    if not r["code"]:
        return sketch.Entries.concat([], nbytes)
    n = np.asarray(r["slen"], dtype=np.int64) // nbytes
    code = np.repeat(np.asarray(r["code"], dtype=np.int64), n)
    sk = np.frombuffer(r["sk"], dtype=np.uint8).reshape(-1, nbytes)
    version = sketch.unpack_lists(np.asarray(r["base"], np.int64), np.asarray(r["olen"], np.int64), n, r["offs"])
    return sketch.Entries(code, version, sk)


def scores(plpy: Any, index: dict[str, Any], q: np.ndarray) -> sketch.Scores | None:
    """The sketch scores of query ``q`` (float32 ``(nq, d)``) under the live codebook's lists
    (pgmaxsim.sketch.scores), or None (no codebook, no lists for its generation)."""
    from pgmaxsim.plpy import codes as codes_mod

    gen = index["options"].get("fs_gen")
    if gen is None:
        return None
    key = "/".join([str(index["id"]), str(gen), hashlib.sha1(q.tobytes()).hexdigest(), _statement(plpy)])
    if _last.get("key") == key:
        return _last["value"]
    cb = codes_mod._codebook(plpy, int(index["id"]), int(gen))
    codec = None if cb is None else _codec(plpy, int(index["id"]), int(gen))
    if cb is None or codec is None:
        value = None
    else:
        qn = fs.normalise(q)
        pc, ps = fs.probe(cb, qn, int(index["options"].get("nprobe", 8)), int(index["options"].get("coarse_probe", 2)))
        ent = _entries(plpy, int(index["id"]), int(gen) % 2, pc, codec.bits // 8)
        value = sketch.scores(codec, qn, pc, ps, ent)
    _last.clear()
    _last.update(key=key, value=value)
    return value


def _key_of(plpy: Any, index: dict[str, Any], versions: np.ndarray) -> dict[int, str]:
    """Version -> key of the live rows among ``versions`` (an update or delete leaves its old
    version in the lists until a compaction: it maps to nothing)."""
    if not len(versions):
        return {}
    plan = _plan(plpy, f"SELECT t.id::text AS id, t.version FROM maxsim.{plpy.quote_ident(index['token_table'])} t"
                       f" WHERE t.version = ANY ($1)", ["int8[]"])
    return {int(r["version"]): r["id"] for r in plpy.execute(plan, [np.unique(versions).tolist()])}


def _keys(plpy: Any, index: dict[str, Any], best: np.ndarray, n: int) -> list[str]:
    """The keys of the live rows among versions ``best`` (in that order), at most ``n``."""
    key_of = _key_of(plpy, index, best)
    return [key_of[int(v)] for v in best.tolist() if v in key_of][:n]


def top(plpy: Any, index_id: int, query: bytes, n: int) -> list[str]:
    """Keys of the (up to) ``n`` live rows with the best sketch scores (``maxsim._sk_top``)."""
    from pgmaxsim.plpy.api import index_by_id

    index = index_by_id(plpy, index_id)
    if n <= 0 or sketch_top(index) <= 0:
        return []
    got = scores(plpy, index, decode_query(query).astype(np.float32))
    if got is None:
        return []
    return _keys(plpy, index, got.top(n + max(16, n // 4)), n)   # spares: entries of rows since updated


def _unmerged_rows(plpy: Any, index: dict[str, Any], slot: int) -> str:
    """``FROM ... WHERE ...`` of the coded token rows (alias ``t``) not merged into slot ``slot``'s
    lists yet (argument $1: the slot).

    From the index's pending versions (``maxsim.skpend_<id>``, 035_firststage.sql: a superset of the
    unmerged rows, kept by the token table's triggers and the merges), O(pending); an index that has
    no such table yet (created before it, not merged since) is checked row by row."""
    iid, tok = int(index["id"]), plpy.quote_ident(index["token_table"])
    has = plpy.execute(f"SELECT pg_catalog.to_regclass('maxsim.skpend_{iid}') IS NOT NULL AS e")[0]["e"]
    if has:
        return (f"FROM maxsim.skpend_{iid} p JOIN maxsim.{tok} t ON t.version = p.version"
                f" WHERE t.codes_{slot} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM maxsim.fs_skrow_{iid} s"
                f" WHERE s.slot = $1 AND s.version = p.version)")
    return (f"FROM maxsim.{tok} t"
            f" WHERE t.codes_{slot} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM maxsim.fs_skrow_{iid} s"
            f" WHERE s.slot = $1 AND s.version = t.version)")


def _pending(plpy: Any, index: dict[str, Any], q: np.ndarray, slot: int, n: int, cap: int) -> list[str]:
    """Keys of the coded rows not merged into slot ``slot``'s lists yet (the lists cannot rank them):
    all of them up to ``cap``; past it, the ``n`` best by the codebook's probe score (a backlog of
    writes the worker's trainer has not merged yet: more than the rescoring should read)."""
    from pgmaxsim.plpy import codes

    unmerged = _unmerged_rows(plpy, index, slot)
    rows = plpy.execute(_plan(plpy, f"SELECT t.id::text AS id {unmerged} LIMIT $2", ["int2", "int4"]), [slot, cap + 1])
    if len(rows) <= cap:
        return [r["id"] for r in rows]
    return codes.best(plpy, index, q, unmerged, ["int2"], [slot], n)


def candidates(plpy: Any, index_id: int, query: bytes, n: int, cap: int) -> list[str] | None:
    """The first stage of a codebook index on a PL/Python server (``maxsim._sk_candidates``): the
    ``n`` best rows by sketch score, plus the coded rows not merged into the lists yet (all of them
    up to ``cap``, else their ``n`` best by the codebook's probe score). Without lists for the live
    codebook (not built yet, or option ``sketch_top`` 0): the ``n`` best of every coded row by the
    probe score, as the pure-SQL path ranks them over its GIN. None only without a live codebook.
    These servers have no GIN over the codes (maxsim._fs_create): nothing else ranks the rows."""
    from pgmaxsim.plpy.api import index_by_id

    index = index_by_id(plpy, index_id)
    gen = index["options"].get("fs_gen")
    if gen is None:
        return None
    slot = int(gen) % 2
    q = decode_query(query).astype(np.float32)
    got = scores(plpy, index, q) if sketch_top(index) > 0 else None
    if got is None:   # no lists to rank the rows: all of them by the probe score
        from pgmaxsim.plpy import codes

        every = f"FROM maxsim.{plpy.quote_ident(index['token_table'])} t WHERE t.codes_{slot} IS NOT NULL"
        return codes.best(plpy, index, q, every, [], [], n)
    pending = _pending(plpy, index, q, slot, n, cap)
    # the rows with the best plain sketch scores first (what codes.rescore keeps first: so they are
    # candidates whatever the budget), then the budget by the lifted score
    first = got.top(min(sketch_top(index), n) + 16)
    fill = got.top(n + max(16, n // 4), lifted=True)
    key_of = _key_of(plpy, index, np.concatenate([first, fill]))
    keys = [key_of[int(v)] for v in first if int(v) in key_of][:min(sketch_top(index), n)]
    seen = set(keys)
    for v in fill.tolist():
        if len(keys) >= n:
            break
        k = key_of.get(int(v))
        if k is not None and k not in seen:
            keys.append(k)
            seen.add(k)
    return keys + [k for k in pending if k not in seen]


def unmerged(plpy: Any, index: dict[str, Any], versions: list[int]) -> set[int]:
    """Those of ``versions`` not merged into the live slot's lists (written since the last merge:
    the lists cannot rank them), from ``fs_skrow_<id>``'s primary key."""
    gen = index["options"].get("fs_gen")
    if gen is None or not versions:
        return set()
    plan = _plan(plpy, f"SELECT v.v FROM pg_catalog.unnest($2) AS v(v) WHERE NOT EXISTS (SELECT 1 FROM"
                       f" maxsim.fs_skrow_{int(index['id'])} s WHERE s.slot = $1 AND s.version = v.v)",
                 ["int2", "int8[]"])
    return {int(r["v"]) for r in plpy.execute(plan, [int(gen) % 2, versions])}


def first(plpy: Any, index: dict[str, Any], q: np.ndarray, version_of: dict[str, int], n: int) -> list[str]:
    """Of rows ``version_of`` (key -> its live version), the (up to) ``n`` with the best sketch
    scores above the floor, best first (what centroid interaction must not drop)."""
    if n <= 0 or not version_of:
        return []
    got = scores(plpy, index, q)
    if got is None:
        return []
    versions, score, base = got.versions, got.score, got.base
    keys = list(version_of)
    v = np.array([version_of[k] for k in keys], dtype=np.int64)
    at = np.minimum(np.searchsorted(versions, v), max(len(versions) - 1, 0))
    hit = (versions[at] == v) if len(versions) else np.zeros(len(v), bool)
    s = np.where(hit, score[at] if len(versions) else 0.0, -np.inf)
    order = [i for i in np.lexsort((np.arange(len(keys)), -s)) if s[i] > base + 1e-6][:n]
    return [keys[int(i)] for i in order]

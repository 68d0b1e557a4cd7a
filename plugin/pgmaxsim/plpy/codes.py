"""A row's codes under an index's codebook first stage, inside the backend (``maxsim._fs_assign``).

The codebook of one generation never changes once written (pgmaxsim.codebook), so each backend
keeps the last one it read, by index, generation and codebook table (a re-embedding's switch
renames the tables: a new oid).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pgmaxsim import firststage as fs
from pgmaxsim.db.codec import decode_halfvec_array
from pgmaxsim.db.sqlfiles import VECTOR_SCHEMA_SQL
from pgmaxsim.plpy import plans
from pgmaxsim.plpy.tokens import decode_query

_cache: dict[tuple[int, int, int, str], fs.Codebook] = {}


def _codebook(plpy: Any, index_id: int, gen: int) -> fs.Codebook | None:
    slot = int(gen) % 2
    # the writing transaction of the slot's codebook, beside the table: a training that failed and
    # ran again (maxsim.train_first_stage) rewrites a generation that is not live yet
    fine_table = f"maxsim.fs_fine_{int(index_id)}"
    got = plpy.execute(
        f"SELECT pg_catalog.to_regclass({plpy.quote_literal(fine_table)})::oid AS o,"
        f" (SELECT c.xmin::text FROM maxsim.fs_coarse_{int(index_id)} c WHERE c.slot = {slot} AND c.cell = 0) AS x")[0]
    key = (int(index_id), int(gen), int(got["o"] or 0), str(got["x"]))
    if key in _cache:
        return _cache[key]
    row = plpy.execute(
        f"SELECT (SELECT pg_catalog.array_send(pg_catalog.array_agg(c.vec ORDER BY c.cell))"
        f" FROM maxsim.fs_coarse_{int(index_id)} c WHERE c.slot = {slot}) AS coarse,"
        f" (SELECT pg_catalog.array_send(pg_catalog.array_agg(f.vec ORDER BY f.code))"
        f" FROM maxsim.fs_fine_{int(index_id)} f WHERE f.slot = {slot}) AS fine")[0]
    if row["coarse"] is None or row["fine"] is None:
        return None
    coarse = decode_halfvec_array(row["coarse"]).astype(np.float32)
    fine = decode_halfvec_array(row["fine"]).astype(np.float32)
    _cache.clear()
    _cache[key] = fs.Codebook(coarse, fine.reshape(len(coarse), len(fine) // len(coarse), -1))
    return _cache[key]


def assign(plpy: Any, index_id: int, gen: int | None, tokens: bytes) -> list[int] | None:
    """The distinct codes (sorted) of ``array_send(tokens)`` under generation ``gen``; None when
    there is none (not trained)."""
    if gen is None:
        return None
    cb = _codebook(plpy, index_id, gen)
    if cb is None:
        return None
    return np.unique(fs.assign(cb, decode_query(tokens).astype(np.float32))).tolist()


def batch(plpy: Any, index_id: int, gen: int, blobs: list[bytes], ns: list[int], dim: int,
          storage: str) -> dict[str, list[int]]:
    """Stored rows' distinct codes under generation ``gen``, flattened (a training's fill,
    ``maxsim._fs_codes_py``; pgmaxsim.fs_train.batch_codes)."""
    from pgmaxsim import fs_train

    cb = _codebook(plpy, index_id, gen)
    if cb is None:
        plpy.error(f"pgmaxsim: generation {gen} of the first stage of index {index_id} has no codebook")
    flat, lens = fs_train.batch_codes(cb, blobs, ns, dim, storage)
    return {"flat": flat, "lens": lens}


def _coded_rows(plpy: Any, index: dict[str, Any], col: str, keys: list[str]
                ) -> tuple[list[str], fs.InvertedLists, list[str], dict[str, int]]:
    """Rows ``keys``' codes in column ``col``: (the keys of the rows with codes, in the order read;
    their codes, row ``i`` -> its codes; the keys of the rows without (NULL: not coded yet); every
    row's version).

    Each array's binary form comes with its 20-byte header cut off in SQL, so what is left is
    (length, value) int4 pairs, and the rows' are joined and split by one NumPy view (a NumPy array
    per row cost ~10 us of Python a row, ~250 rows a search). Aggregating the rows into one in SQL
    costs more than it saves: the per-row counts it needs read the larger, out-of-line arrays a
    second time. The binary form is pgvector's (:func:`_codes_column`)."""
    plan = plans.kept(plpy,
                 f"SELECT t.id::text AS id, t.version, {_codes_column(plpy, col)}"
                 f" FROM maxsim.{plpy.quote_ident(index['token_table'])} t WHERE t.id = ANY ($1::{index['id_type']}[])",
                 ["text[]"])
    rows = plpy.execute(plan, [keys])
    coded = [r for r in rows if _coded(r)]
    return ([r["id"] for r in coded], _split(plpy, index, col, coded),
            [r["id"] for r in rows if not _coded(r)], {r["id"]: int(r["version"]) for r in rows})


#: The most codes pgvector's ``vector`` holds (its VECTOR_MAX_DIM): a row with more (a document of
#: over 16,000 distinct codes) is read through ``array_send`` instead.
VECTOR_MAX = 16_000

_vector_schema: dict[str, str] = {}


def _vector(plpy: Any) -> str:
    """pgvector's schema, quoted (once per backend: an extension is not moved while in use)."""
    if "s" not in _vector_schema:
        got = plpy.execute(VECTOR_SCHEMA_SQL)
        if not got:
            plpy.error("pgmaxsim: the vector extension (pgvector) is not installed")
        _vector_schema["s"] = got[0]["s"]
    return _vector_schema["s"]


def _codes_column(plpy: Any, col: str) -> str:
    """The SQL expressions reading codes column ``col`` of token row ``t`` as :func:`_split` takes
    them: ``codes`` as pgvector's binary ``vector`` (a 4-byte header, then each code as a big-endian
    float32: exact below 2^24, and codebooks hold at most 256 x 488), ``long`` for a row beyond
    :data:`VECTOR_MAX` codes, its ``array_send`` form without the 20-byte header ((length, value)
    int4 pairs).

    Why pgvector's form: the int4[] cast to ``vector`` and ``vector_send`` are plain C loops, while
    ``array_send`` calls int4send through the function manager for each element, ~6x the server's
    time (10K rows of ~460 codes: 49 ms against 260 ms; a search reads ~250 such rows)."""
    v = _vector(plpy)
    fits = f"pg_catalog.cardinality(t.{col}) BETWEEN 1 AND {VECTOR_MAX}"
    return (f"CASE WHEN {fits} THEN {v}.vector_send(t.{col}::{v}.vector) END AS codes,"
            f" CASE WHEN NOT {fits} THEN pg_catalog.substr(pg_catalog.array_send(t.{col}), 21) END AS long")


def _coded(row: dict[str, Any]) -> bool:
    return row["codes"] is not None or row["long"] is not None


def _split(plpy: Any, index: dict[str, Any], col: str, rows: list[dict[str, Any]]) -> fs.InvertedLists:
    """Rows' codes (:func:`_codes_column`, none NULL) as row -> codes lists: joined and split by one
    NumPy view (a NumPy array per row cost ~10 us of Python a row)."""
    if not rows:
        return fs.InvertedLists(np.zeros(1, dtype=np.int64), np.empty(0, dtype=np.int32))
    blobs = [r["codes"] if r["codes"] is not None else _as_vector(plpy, index, col, r["long"]) for r in rows]
    lengths = np.array([len(b) >> 2 for b in blobs], dtype=np.int64)   # each with its header word
    joined = b"".join(blobs)
    words = np.frombuffer(joined, dtype=">f4")
    head = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    if len(words) != lengths.sum() or (np.frombuffer(joined, dtype=">u2")[2 * head] != (lengths - 1) & 0xFFFF).any():
        plpy.error(f"pgmaxsim: the {col} arrays of {index['token_table']} do not read back as their codes")
    keep = np.ones(len(words), dtype=bool)
    keep[head] = False
    ptr = np.concatenate([[0], np.cumsum(lengths - 1)])
    return fs.InvertedLists(ptr, words[keep].astype(np.int32))


def _as_vector(plpy: Any, index: dict[str, Any], col: str, blob: bytes) -> bytes:
    """An ``array_send`` form without its header (:func:`_codes_column`'s ``long``) in the ``vector``
    form: a header word (the count, modulo 2^16), then the codes as big-endian float32."""
    pairs = np.frombuffer(blob, dtype=">i4")
    if len(pairs) % 2 or (pairs[0::2] != 4).any():   # a NULL or a second dimension: never written
        plpy.error(f"pgmaxsim: the {col} arrays of {index['token_table']} are not one-dimensional int4 without NULLs")
    n = len(pairs) // 2
    return (n & 0xFFFF).to_bytes(2, "big") + bytes(2) + pairs[1::2].astype(">f4").tobytes()


#: Rows read per fetch when the probe score ranks every row a statement returns (:func:`best`): ~2 KB
#: of codes a row, so a chunk's arrays stay ~10 MB however large the backlog.
CHUNK = 4096


def best(plpy: Any, index: dict[str, Any], q: np.ndarray, rows: str, types: list[str], args: list[Any],
         n: int) -> list[str]:
    """Keys of the (up to) ``n`` rows with the best probe score under the live codebook among the
    coded token rows ``rows`` names (``FROM ... WHERE ...`` of token table alias ``t``, arguments
    ``args`` of ``types``), best first, ties in the order read; rows holding no probed code are not
    candidates.

    The probe score is the pure-SQL first stage's (maxsim._fs_candidates over the codes' GIN;
    pgmaxsim.firststage.probed_scores): per query token, the best similarity among its ``nprobe``
    probed codes that the row holds, else the token's lowest probed one. Where no sketch list ranks
    rows (pgmaxsim.plpy.sketch.candidates: a backlog past the cap, an index whose lists are not built,
    option ``sketch_top`` 0) this is the first stage of a PL/Python server, which has no GIN (it cost
    ~0.7 % of the raw fp16 bytes and ~2.5 ms of server time a written row to serve only these cases):
    the rows are read through a cursor in chunks instead, the best ``n`` kept after each."""
    gen = index["options"].get("fs_gen")
    cb = None if gen is None else _codebook(plpy, int(index["id"]), int(gen))
    if cb is None or n <= 0:
        return []
    col = f"codes_{int(gen) % 2}"
    pc, ps = fs.probe(cb, q, int(index["options"].get("nprobe", 8)), int(index["options"].get("coarse_probe", 2)))
    keys: list[str] = []
    score = np.empty(0, dtype=np.float32)
    cursor = plpy.cursor(plans.kept(plpy, f"SELECT t.id::text AS id, {_codes_column(plpy, col)} {rows}", types),
                         args)
    while True:
        chunk = cursor.fetch(CHUNK)
        if not len(chunk):
            break
        per_row = _split(plpy, index, col, list(chunk))
        reached, got = fs.row_probed_scores(per_row, pc, ps, cb.n_codes)
        keys += [chunk[int(i)]["id"] for i in reached]
        score = np.concatenate([score, got.astype(np.float32)])
        if len(keys) > n:
            top = np.sort(np.argsort(-score, kind="stable")[:n])   # read order kept: ties stay first-read first
            keys, score = [keys[int(i)] for i in top], score[top]
    order = np.argsort(-score, kind="stable")[:n]
    return [keys[int(i)] for i in order]


def rescore(plpy: Any, index: dict[str, Any], q: np.ndarray, keys: list[str], n: int) -> list[str]:
    """The best ``n`` of rows ``keys``: first the (up to option ``sketch_top``) rows the residual
    sketch lists rank highest (pgmaxsim.plpy.sketch: near-copies of query tokens, which centroids
    cannot tell apart), then the rest by PLAID's centroid interaction (MaxSim with each token
    replaced by its code's centroid, over all of a row's codes: pgmaxsim.firststage), then every
    row without live codes (never dropped: nothing is known about them).

    Rows written since the lists' last merge (unmerged) have no sketch score: when the sketch's
    rows leave them fewer than ceil(n / 4) slots (budgets at or near ``sketch_top``), the sketch's
    lowest kept rows contest the difference with them by centroid interaction (``_contested``)."""
    from pgmaxsim.plpy import sketch

    gen = index["options"].get("fs_gen")
    cb = None if gen is None else _codebook(plpy, int(index["id"]), int(gen))
    if cb is None:
        return keys
    ids, per_row, uncoded, version_of = _coded_rows(plpy, index, f"codes_{int(gen) % 2}", keys)
    if len(ids) <= n:
        return ids + uncoded
    kept = sketch.first(plpy, index, q, {k: version_of[k] for k in ids}, min(n, sketch.sketch_top(index)))
    kept, contested = _contested(plpy, index, kept, ids, version_of, n)
    taken = set(kept)
    rest = np.array([i for i, k in enumerate(ids) if k not in taken], dtype=np.intp)
    coded = [ids[i] for i in rest.tolist()]
    if kept and (not coded or len(kept) >= n):
        return kept + coded[:n - len(kept)] + uncoded
    score = fs.centroid_interaction(cb, q, per_row, rest)
    if contested:
        slots, pool = contested
        at = {k: i for i, k in enumerate(coded)}
        pool_at = np.array([at[k] for k in pool], dtype=np.int64)
        won = pool_at[np.lexsort((pool_at, -score[pool_at]))[:slots]]
        kept = kept + [coded[int(i)] for i in won]
        score[won] = -np.inf   # placed: out of the fill below
    best = np.argsort(-score, kind="stable")[:n - len(kept)]
    return kept + [coded[int(i)] for i in best] + uncoded


def _contested(plpy: Any, index: dict[str, Any], kept: list[str], coded: list[str], version_of: dict[str, int],
               n: int) -> tuple[list[str], tuple[int, list[str]] | None]:
    """The sketch's rows that keep their slots, and (slots, rows) to fill by centroid interaction
    from rows: the sketch's lowest kept rows and the unmerged candidates.

    Why: the lists rank merged rows only, so a row written since the last merge (pending until the
    worker's trainer merges it) can reach exact scoring only through the centroid-interaction fill,
    and when the sketch's rows take the whole budget (``n`` <= ``sketch_top``, as in
    maxsim.search(name, q, 10, 10)) the fill has no slot: the row just written, even the query's
    exact best match, would not be found. A user expects it to be. So the unmerged candidates are
    owed ceil(n / 4) slots (at most one per unmerged row): the slots the fill already has count,
    the rest are taken from the sketch's lowest kept rows, which contest them with the unmerged rows
    on the one score both have. An unmerged row that centroid interaction ranks above the sketch's
    row takes its slot; one ranked below (a row that does not match: most writes, for most queries)
    leaves it, so the sketch's budget is only given up for a likelier match. The sketch's top ranks,
    where near-copies of query tokens land (what centroids cannot tell apart), stay its own, its
    best row always (with one slot, the finer score decides). Larger budgets, whose fill has the
    owed slots, are unchanged: there unmerged rows compete by centroid interaction with every
    candidate, as before."""
    owed = -(-n // 4)
    most = min(owed - (n - len(kept)), len(kept) - 1)
    if most <= 0:
        return kept, None
    from pgmaxsim.plpy import sketch

    taken = set(kept)
    rest = [k for k in coded if k not in taken]
    new = sketch.unmerged(plpy, index, [version_of[k] for k in rest])
    fresh = [k for k in rest if version_of[k] in new]
    slots = min(most, len(fresh) - (n - len(kept)))
    if slots <= 0:
        return kept, None
    return kept[:len(kept) - slots], (slots, kept[len(kept) - slots:] + fresh)
